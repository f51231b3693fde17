"""Test certificates made at test time with the ``openssl`` CLI (Debian's openssl package,
installed by scripts/setup.sh): a CA, and leaf certificates it signs for 127.0.0.1 /
localhost usable as server and client certificates. Nothing is checked in."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["Ca", "Leaf", "make_ca"]

_CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        pytest.skip("the openssl CLI is not installed (scripts/setup.sh installs Debian's openssl)")
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True)


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Ca:
    cert: Path
    key: Path
    directory: Path

    def issue(self, name: str) -> Leaf:
        """A certificate for 127.0.0.1 and localhost, valid as server and as client certificate."""
        d = self.directory
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
        _openssl("req", *_CURVE, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", self.cert.name, "-CAkey", self.key.name, "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", ext.name, cwd=d,
        )
        return Leaf(d / f"{name}.crt", d / f"{name}.key")


def make_ca(directory: Path, name: str) -> Ca:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", *_CURVE, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory,
    )
    return Ca(directory / f"{name}.crt", directory / f"{name}.key", directory)
