"""JWT verification: every attack is a 401, never a 500, never accepted."""

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from libs.common.auth import TokenVerifier, issue_token
from libs.common.errors import ProblemError
from libs.common.settings import CommonSettings
from tests.conftest import token_claims

SECRET = "unit-test-secret-that-is-long-enough-for-every-hmac-size-0123456789abcdef"


def settings(**overrides) -> CommonSettings:
    return CommonSettings(jwt_secret=SECRET, **overrides)


def claims(**overrides) -> dict:
    return token_claims(**overrides)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def rejected(verifier: TokenVerifier, token: str) -> ProblemError:
    with pytest.raises(ProblemError) as error:
        verifier.verify(token)
    assert error.value.status == 401
    return error.value


def test_valid_token_gives_identity():
    token = jwt.encode(claims(roles=["admin", "agent"]), SECRET, algorithm="HS256")
    identity = TokenVerifier(settings()).verify(token)
    assert (identity.tenant, identity.user_id, identity.roles) == (
        "acme",
        "u1",
        frozenset({"admin", "agent"}),
    )


def test_issued_token_round_trips():
    token = issue_token(settings(), user_id="u9", tenant="demo", roles=["requester"])
    assert TokenVerifier(settings()).verify(token).user_id == "u9"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_unsigned_tokens_are_rejected(alg):
    token = f"{b64({'alg': alg, 'typ': 'JWT'})}.{b64(claims())}."
    rejected(TokenVerifier(settings()), token)


def test_forged_signature_is_rejected():
    token = jwt.encode(claims(), "some-other-secret-of-sufficient-length-42", algorithm="HS256")
    rejected(TokenVerifier(settings()), token)


def test_hs256_signed_with_the_public_key_is_rejected():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    verifier = TokenVerifier(settings(jwt_algorithms=["HS256", "RS256"], jwt_public_key=public_pem))
    good = jwt.encode(claims(), private, algorithm="RS256")
    assert verifier.verify(good).tenant == "acme"
    header = b64({"alg": "HS256", "typ": "JWT"})
    body = b64(claims())
    import hashlib
    import hmac

    signature = hmac.new(public_pem.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{body}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"
    rejected(verifier, forged)


def test_es256_public_key_verification():
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    verifier = TokenVerifier(CommonSettings(jwt_algorithms=["ES256"], jwt_public_key=public_pem))
    assert verifier.verify(jwt.encode(claims(), private, algorithm="ES256")).user_id == "u1"
    rejected(verifier, jwt.encode(claims(), SECRET, algorithm="HS256"))  # HS256 not on the allow-list


def test_algorithm_not_on_allow_list_is_rejected():
    token = jwt.encode(claims(), SECRET, algorithm="HS512")
    rejected(TokenVerifier(settings()), token)


def test_expired_token_is_rejected_beyond_leeway():
    token = jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256")
    assert rejected(TokenVerifier(settings(jwt_leeway_s=10)), token).detail == "token expired"


def test_recently_expired_token_is_within_leeway():
    token = jwt.encode(claims(exp=int(time.time()) - 5), SECRET, algorithm="HS256")
    assert TokenVerifier(settings(jwt_leeway_s=10)).verify(token).tenant == "acme"


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "tenant", "iss", "aud"])
def test_token_missing_a_required_claim_is_rejected(missing):
    token = jwt.encode(claims(**{missing: None}), SECRET, algorithm="HS256")
    rejected(TokenVerifier(settings()), token)


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("iss", "evil"),
        ("aud", "other-app"),
        ("tenant", "ACME!"),
        ("tenant", ""),
        ("roles", ["superuser"]),
        ("roles", "admin"),
        ("sub", 42),
    ],
)
def test_wrong_claim_values_are_rejected(claim, value):
    token = jwt.encode(claims(**{claim: value}), SECRET, algorithm="HS256")
    rejected(TokenVerifier(settings()), token)


def test_oversized_token_is_rejected_before_decoding():
    token = jwt.encode(claims(padding="x" * 16_000), SECRET, algorithm="HS256")
    assert len(token) > 16_000
    assert rejected(TokenVerifier(settings()), token).detail == "token too large"


@pytest.mark.parametrize(
    "garbage", ["", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.e30", "\u00e9.\u00e9.\u00e9"]
)
def test_garbage_tokens_are_rejected(garbage):
    rejected(TokenVerifier(settings()), garbage)


def test_production_refuses_the_dev_secret():
    with pytest.raises(ValueError, match="HELPDESK_JWT_SECRET"):
        CommonSettings(env="production")
    with pytest.raises(ValueError, match="HELPDESK_JWT_SECRET"):
        CommonSettings(env="production", jwt_secret="short")
    assert CommonSettings(env="production", jwt_secret=SECRET).env == "production"


def test_leeway_above_30_seconds_is_refused():
    with pytest.raises(ValueError):
        CommonSettings(jwt_leeway_s=31)


def test_rs256_tokens_verify_against_a_real_jwks_endpoint():
    """The verifier fetches the identity provider's JWKS over HTTP (a local server here)."""
    import http.server
    import threading

    from jwt.algorithms import RSAAlgorithm

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": "key-1", "use": "sig", "alg": "RS256"})
    body = json.dumps({"keys": [jwk]}).encode()
    requests: list[str] = []

    class JWKSHandler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), JWKSHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        verifier = TokenVerifier(CommonSettings(jwt_algorithms=["RS256"], jwt_jwks_url=url))
        good = jwt.encode(claims(), private, algorithm="RS256", headers={"kid": "key-1"})
        assert verifier.verify(good).tenant == "acme"
        assert requests == ["/.well-known/jwks.json"]
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        rejected(verifier, jwt.encode(claims(sub="u2"), other, algorithm="RS256", headers={"kid": "key-1"}))
        rejected(
            verifier, jwt.encode(claims(sub="u3"), private, algorithm="RS256", headers={"kid": "unknown"})
        )
    finally:
        server.shutdown()
