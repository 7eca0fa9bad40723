"""The coordinator's own certificate authority: created on first `serve`, it signs the server certificate
and, for mutual TLS, each agent's client certificate.

Agents pin this CA at join (the join token carries its SHA-256 fingerprint), so the server certificate
is checked against the fleet's CA, not the system's; agents ask for the fixed SERVER_NAME whatever address they
dial. The certificate also carries the names and addresses the coordinator serves on (`serve --listen`, plus
`--san`), so a standard TLS client (any language) connects with the CA alone, without overriding the name.
"""

import dataclasses
import datetime
import hashlib
import ipaddress
import os
import pathlib
import socket

from fleetfit.v1.transport import SERVER_NAME

CA_DAYS = 3650
LEAF_DAYS = 825


@dataclasses.dataclass(frozen=True)
class Authority:
    ca_pem: bytes
    ca_key_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes

    @property
    def fingerprint(self) -> str:
        return ca_fingerprint(self.ca_pem)

    @property
    def server_chain_pem(self) -> bytes:
        """The server certificate followed by the CA, so that a joining agent can see (and check) the CA."""
        return self.server_cert_pem + self.ca_pem

    def issue_client(self, device_id: str) -> tuple[bytes, bytes]:
        """A client certificate (CN = device id) and its key, for mutual TLS."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        ca_cert = x509.load_pem_x509_certificate(self.ca_pem)
        ca_key = serialization.load_pem_private_key(self.ca_key_pem, None)
        key, cert = _leaf(ca_cert, ca_key, device_id, server=False)
        return cert, key


def ca_fingerprint(ca_pem: bytes) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(ca_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def _write_private(path: pathlib.Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def names_for(listen_host: str, extra: list[str] = ()) -> list[str]:
    """The names a client may dial this coordinator by: the listen host (for a wildcard, this machine's host
    name, its addresses and loopback), plus `extra`."""
    host = listen_host.strip("[]")
    found = [host]
    if host in ("", "0.0.0.0", "::"):
        hostname = socket.gethostname()
        found = [hostname, socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
        try:
            found += [info[4][0] for info in socket.getaddrinfo(hostname, None)]
        except OSError:
            pass  # a host name that does not resolve: the names above and --san
    elif host in ("127.0.0.1", "localhost", "::1"):
        found = ["localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in [*found, *extra] if n and not n.startswith("fe80")))


def _general_name(name: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def certificate_names(cert_pem: bytes) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    from cryptography import x509

    san = x509.load_pem_x509_certificate(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return {str(n.value) for n in san.value}


def _leaf(ca_cert, ca_key, name: str, server: bool, alt_names: list[str] = ()) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(ca_cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if server:
        names = [_general_name(n) for n in dict.fromkeys([name, *alt_names])]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def load_or_create(directory: pathlib.Path, server_names: list[str] | None = None) -> Authority:
    """The CA and server certificate kept in `directory` (keys mode 0600), created on first use. With
    `server_names`, a server certificate that lacks one of them is issued again by the same CA (agents keep
    trusting it: they pin the CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    files = {n: directory / f"{n}.pem" for n in ("ca", "ca-key", "server", "server-key")}
    if all(p.exists() for p in files.values()):
        found = Authority(*(files[n].read_bytes() for n in ("ca", "ca-key", "server", "server-key")))
        wanted = [str(_general_name(n).value) for n in server_names or []]
        if set(wanted) <= certificate_names(found.server_cert_pem):
            return found
        ca_cert = x509.load_pem_x509_certificate(found.ca_pem)
        ca_key = serialization.load_pem_private_key(found.ca_key_pem, None)
        names = sorted(certificate_names(found.server_cert_pem) - {SERVER_NAME}) + wanted
        server_key, server_cert = _leaf(ca_cert, ca_key, SERVER_NAME, server=True, alt_names=names)
        _write_private(files["server-key"], server_key)
        files["server"].write_bytes(server_cert)
        return dataclasses.replace(found, server_cert_pem=server_cert, server_key_pem=server_key)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetfit fleet CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    server_key, server_cert = _leaf(ca_cert, ca_key, SERVER_NAME, server=True, alt_names=server_names or [])
    authority = Authority(ca_cert.public_bytes(serialization.Encoding.PEM), _key_pem(ca_key), server_cert, server_key)
    _write_private(files["ca-key"], authority.ca_key_pem)
    _write_private(files["server-key"], authority.server_key_pem)
    files["server"].write_bytes(authority.server_cert_pem)
    files["ca"].write_bytes(authority.ca_pem)  # written last: its presence means the set is complete
    return authority
