"""Security: nothing is written outside output_dir and work_dir, inputs are parsed without
executing anything, and a scheduler can be reached over TLS."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from contextlib import redirect_stderr
from pathlib import Path

import pytest
from stdatamodels.jwst import datamodels

from outlier_dask import ParameterError, detect_outliers
from outlier_dask.cli import main
from outlier_dask.io.association import AssociationError
from outlier_dask.io.validation import SchedulerUnreachableError
from outlier_dask.synthetic import write_association


@pytest.fixture(scope="module")
def association(tmp_path_factory):
    return write_association(
        tmp_path_factory.mktemp("security") / "data",
        n_exposures=2,
        n_detectors=1,
        detector_shape=(64, 80),
        seed=8,
    )


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def _asn_with_members(folder: Path, expnames: list[str], product: str = "p") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    body = {
        "asn_type": "image3",
        "products": [
            {"name": product, "members": [{"expname": e, "exptype": "science"} for e in expnames]}
        ],
    }
    path = folder / f"{product}_asn.json"
    path.write_text(json.dumps(body))
    return path


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_member_paths_cannot_steer_where_products_go(association, tmp_path, form):
    elsewhere = tmp_path / "x"
    elsewhere.mkdir()
    for cal in association.cal_paths:
        shutil.copy(cal, elsewhere / cal.name)
    if form == "relative":
        names = [f"../x/{cal.name}" for cal in association.cal_paths]
    else:
        names = [str(elsewhere / cal.name) for cal in association.cal_paths]
    asn = _asn_with_members(tmp_path / "asn", names)
    out, work = tmp_path / "out", tmp_path / "work"
    before = _files_under(tmp_path)
    result = detect_outliers(
        asn,
        output_dir=out,
        work_dir=work,
        scheduler="synchronous",
        save_intermediate_results=True,
        in_memory=False,
    )
    new = _files_under(tmp_path) - before
    assert new, "the run wrote its products"
    assert all(p.parent == out for p in new), sorted(new - {p for p in new if p.parent == out})
    assert {p.name for p in result.outputs} == {
        c.name.replace("_cal.fits", "_crf.fits") for c in association.cal_paths
    }
    assert not list(work.iterdir())


def test_file_names_inside_models_cannot_steer_products(association, tmp_path):
    """An in-memory model's ``meta.filename`` names its intermediate products: only its base
    name is used. (A file's name comes from the file itself, never from its contents.)"""
    models = []
    for k, cal in enumerate(association.cal_paths):
        model = datamodels.ImageModel(str(cal))
        model.meta.filename = ["../../evil_cal.fits", "/tmp/evil2_cal.fits"][k]
        models.append(model)
    out = tmp_path / "out"
    before = _files_under(tmp_path)
    detect_outliers(models, output_dir=out, scheduler="synchronous", save_intermediate_results=True)
    new = _files_under(tmp_path) - before
    assert "evil_outlier_i2d.fits" in {p.name for p in new}
    assert all(p.parent == out for p in new)
    assert not Path("/tmp/evil2_outlier_i2d.fits").exists()


def test_product_names_with_folders_are_refused_before_anything_is_written(association, tmp_path):
    asn = _asn_with_members(
        association.asn_path.parent / "bad", [f"../{c.name}" for c in association.cal_paths]
    )
    body = json.loads(asn.read_text())
    body["products"][0]["name"] = "../../escaped"
    asn.write_text(json.dumps(body))
    before = _files_under(tmp_path)
    with pytest.raises(AssociationError, match="must be a plain file name"):
        detect_outliers(
            asn,
            output_dir=tmp_path / "out",
            scheduler="synchronous",
            save_intermediate_results=True,
        )
    assert _files_under(tmp_path) == before


def test_associations_are_parsed_as_plain_json(tmp_path):
    marker = tmp_path / "executed"
    asn = tmp_path / "p_asn.json"
    asn.write_text(f'!!python/object/apply:os.system ["touch {marker}"]')
    with pytest.raises(AssociationError, match="not a JSON association"):
        detect_outliers(asn, output_dir=tmp_path / "out")
    assert not marker.exists()


# --------------------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _certificate_authority(folder: Path, name: str) -> tuple[Path, Path]:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}",
        cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A certificate authority, a certificate it signed for 127.0.0.1, and a stranger CA."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    folder = tmp_path_factory.mktemp("tls")
    ca, ca_key = _certificate_authority(folder, "ca")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "node.key", "-out", "node.csr",
        "-subj", "/CN=localhost",
        cwd=folder,
    )  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "node.csr", "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", "node.pem", "-days", "2", "-extfile", "ext.cnf",
        cwd=folder,
    )  # fmt: skip
    stranger, _ = _certificate_authority(folder, "stranger")
    return {"ca": ca, "cert": folder / "node.pem", "key": folder / "node.key", "other": stranger}


@pytest.fixture(scope="module")
def tls_cluster(certificates):
    """A scheduler and a worker that speak TLS only and require client certificates."""
    from distributed import LocalCluster, Security

    node = {"cert": str(certificates["cert"]), "key": str(certificates["key"])}
    security = Security(
        tls_ca_file=str(certificates["ca"]),
        tls_scheduler_cert=node["cert"],
        tls_scheduler_key=node["key"],
        tls_worker_cert=node["cert"],
        tls_worker_key=node["key"],
        tls_client_cert=node["cert"],
        tls_client_key=node["key"],
        require_encryption=True,
    )
    with LocalCluster(
        n_workers=1,
        processes=False,
        security=security,
        protocol="tls://",
        dashboard_address=":0",
    ) as cluster:
        yield cluster


def _tls_options(certificates):
    return {
        "tls_ca_file": str(certificates["ca"]),
        "tls_cert": str(certificates["cert"]),
        "tls_key": str(certificates["key"]),
    }


@pytest.fixture(scope="module")
def reference_flags(association, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    return detect_outliers(association.asn_path, output_dir=out, scheduler="synchronous").flagged


def test_tls_scheduler_with_certificate_files(
    association, tmp_path, certificates, tls_cluster, reference_flags
):
    address = tls_cluster.scheduler_address
    assert address.startswith("tls://")
    result = detect_outliers(
        association.asn_path, output_dir=tmp_path, scheduler=address, **_tls_options(certificates)
    )
    assert result.status == "COMPLETE"
    assert result.flagged == reference_flags


def test_tls_scheduler_with_a_security_object(
    association, tmp_path, certificates, tls_cluster, reference_flags
):
    from distributed import Security

    security = Security(
        tls_ca_file=str(certificates["ca"]),
        tls_client_cert=str(certificates["cert"]),
        tls_client_key=str(certificates["key"]),
        require_encryption=True,
    )
    result = detect_outliers(
        association.asn_path,
        output_dir=tmp_path,
        scheduler=tls_cluster.scheduler_address,
        security=security,
    )
    assert result.flagged == reference_flags


def test_tls_address_without_certificates_is_refused(association, tmp_path, tls_cluster):
    with pytest.raises(ParameterError, match="needs TLS: give tls_ca_file"):
        detect_outliers(
            association.asn_path, output_dir=tmp_path, scheduler=tls_cluster.scheduler_address
        )


def test_tls_with_an_unknown_authority_is_refused_before_work(
    association, tmp_path, certificates, tls_cluster
):
    options = _tls_options(certificates) | {"tls_ca_file": str(certificates["other"])}
    with pytest.raises(SchedulerUnreachableError, match="TLS handshake with tls://.* failed"):
        detect_outliers(
            association.asn_path,
            output_dir=tmp_path,
            scheduler=tls_cluster.scheduler_address,
            **options,
        )
    assert not any(tmp_path.glob("*_crf.fits"))


def test_tls_files_must_exist_and_need_a_tls_address(association, tmp_path, certificates):
    with pytest.raises(ParameterError, match="tls_cert: cannot read the file"):
        detect_outliers(
            association.asn_path,
            scheduler="tls://127.0.0.1:8786",
            tls_ca_file=str(certificates["ca"]),
            tls_cert=str(tmp_path / "missing.pem"),
        )
    stderr = io.StringIO()
    with redirect_stderr(stderr):
        status = main(
            [
                "run",
                str(association.asn_path),
                "--output-dir",
                str(tmp_path),
                "--tls-ca-file",
                str(certificates["ca"]),
            ]
        )
    assert status == 2
    assert "tls_ca_file: TLS files need a tls://host:port scheduler address" in stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()
