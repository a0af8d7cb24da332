"""What kind of key the CA has: ``rsa-2048`` … ``ec-p384``.

One small value type shared by the config, both backends and the checks that
a loaded key is the one the config promises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric import ec, rsa

Algorithm = Literal["rsa", "ec"]
Curve = Literal["P-256", "P-384"]

RSA_SIZES = (2048, 3072, 4096)
_CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}
# cryptography's curve names back to the NIST names used here.
_CURVE_BY_NAME: dict[str, Curve] = {"secp256r1": "P-256", "secp384r1": "P-384"}
_NAMES = ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384")


@dataclass(frozen=True)
class KeySpec:
    """An RSA size or an EC curve; anything weaker than RSA-2048 is refused."""

    algorithm: Algorithm
    rsa_bits: int | None = None
    curve: Curve | None = None

    def __post_init__(self) -> None:
        if self.algorithm == "rsa":
            if self.curve is not None:
                raise ValueError("an RSA key spec has no curve")
            if self.rsa_bits is None or self.rsa_bits < 2048:
                raise ValueError(f"RSA keys must have at least 2048 bits, not {self.rsa_bits}")
            if self.rsa_bits not in RSA_SIZES:
                raise ValueError(f"RSA key size must be one of {', '.join(map(str, RSA_SIZES))}, "
                                 f"not {self.rsa_bits}")
        elif self.algorithm == "ec":
            if self.rsa_bits is not None:
                raise ValueError("an EC key spec has no RSA size")
            if self.curve not in _CURVES:
                raise ValueError(f"EC curve must be P-256 or P-384, not {self.curve!r}")
        else:
            raise ValueError(f"key algorithm must be rsa or ec, not {self.algorithm!r}")

    @classmethod
    def parse(cls, text: str | KeySpec) -> KeySpec:
        """``rsa-2048`` | ``rsa-3072`` | ``rsa-4096`` | ``ec-p256`` | ``ec-p384``."""
        if isinstance(text, KeySpec):
            return text
        name = text.strip().lower() if isinstance(text, str) else ""
        if name.startswith("rsa-") and name[4:].isdigit():
            return cls("rsa", rsa_bits=int(name[4:]))
        if name in ("ec-p256", "ec-p384"):
            return cls("ec", curve="P-256" if name == "ec-p256" else "P-384")
        raise ValueError(f"unknown key algorithm {text!r}; use one of {', '.join(_NAMES)}")

    @classmethod
    def of(cls, key: object) -> KeySpec:
        """The spec of an existing public or private key (refuses weak or odd keys)."""
        if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
            return cls("rsa", rsa_bits=key.key_size)
        if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
            nist = _CURVE_BY_NAME.get(key.curve.name)
            if nist is None:
                raise ValueError(f"EC curve {key.curve.name} is not supported; use P-256 or P-384")
            return cls("ec", curve=nist)
        raise ValueError(f"{type(key).__name__} is neither an RSA nor an EC key")

    @property
    def name(self) -> str:
        if self.algorithm == "rsa":
            return f"rsa-{self.rsa_bits}"
        return "ec-p256" if self.curve == "P-256" else "ec-p384"

    def ec_curve(self) -> ec.EllipticCurve:
        """The cryptography curve object (EC specs only)."""
        if self.curve is None:
            raise ValueError(f"{self.name} is not an EC key spec")
        return _CURVES[self.curve]()

    def __str__(self) -> str:
        return self.name
