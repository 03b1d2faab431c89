"""Checks deploy/kubernetes/overlays/secure/cert-manager.example.yaml.

Its objects are cert-manager's custom resources, for which kubernetes-validate
has no schema (it warns and checks nothing), so .ci/run runs this instead:
every object is a cert-manager.io/v1 Issuer or Certificate whose spec keys are
cert-manager's, every issuerRef names an Issuer of the same file, and the
Secret that the overlay mounts as `tls` is a (non-CA) Certificate's
secretName. Not a schema: value types are not checked.

    python check_cert_manager_example.py EXAMPLE DEPLOYMENT_PATCH
"""

import sys

import yaml

# cert-manager.io/v1 spec fields (cert-manager 1.16+).
CERTIFICATE_SPEC = {
    "additionalOutputFormats", "commonName", "dnsNames", "duration",
    "emailAddresses", "encodeUsagesInRequest", "ipAddresses", "isCA",
    "issuerRef", "keystores", "literalSubject", "nameConstraints",
    "otherNames", "privateKey", "renewBefore", "renewBeforePercentage",
    "revisionHistoryLimit", "secretName", "secretTemplate",
    "signatureAlgorithm", "subject", "uris", "usages",
}
PRIVATE_KEY = {"algorithm", "encoding", "rotationPolicy", "size"}
ISSUER_REF = {"group", "kind", "name"}
ISSUER_SPEC = {"acme", "ca", "selfSigned", "vault", "venafi"}
TLS_VOLUME = "tls"


def problems(example_path, patch_path):
    with open(example_path, encoding="utf-8") as file:
        objects = [item for item in yaml.safe_load_all(file) if item is not None]
    with open(patch_path, encoding="utf-8") as file:
        patch = yaml.safe_load(file)

    found = []
    issuers = set()
    certificates = []
    for item in objects:
        kind, name = item.get("kind"), item.get("metadata", {}).get("name")
        where = f"{kind} {name}"
        if item.get("apiVersion") != "cert-manager.io/v1":
            found.append(f"{where}: apiVersion is not cert-manager.io/v1")
        if not name:
            found.append(f"{where}: no metadata.name")
        spec = item.get("spec") or {}
        if kind == "Issuer":
            issuers.add(name)
            unknown = set(spec) - ISSUER_SPEC
            kinds = set(spec) & ISSUER_SPEC
            if unknown:
                found.append(f"{where}: unknown spec keys {sorted(unknown)}")
            if len(kinds) != 1:
                found.append(f"{where}: needs exactly one of {sorted(ISSUER_SPEC)}")
        elif kind == "Certificate":
            certificates.append((where, spec))
            unknown = set(spec) - CERTIFICATE_SPEC
            if unknown:
                found.append(f"{where}: unknown spec keys {sorted(unknown)}")
            unknown = set(spec.get("privateKey") or {}) - PRIVATE_KEY
            if unknown:
                found.append(f"{where}: unknown privateKey keys {sorted(unknown)}")
            if not spec.get("secretName"):
                found.append(f"{where}: no secretName")
        else:
            found.append(f"{where}: neither an Issuer nor a Certificate")

    for where, spec in certificates:
        reference = spec.get("issuerRef") or {}
        unknown = set(reference) - ISSUER_REF
        if unknown:
            found.append(f"{where}: unknown issuerRef keys {sorted(unknown)}")
        if reference.get("kind", "Issuer") != "Issuer" or reference.get("name") not in issuers:
            found.append(
                f"{where}: issuerRef {reference} names no Issuer of this file "
                f"({sorted(issuers)})"
            )

    volumes = patch["spec"]["template"]["spec"].get("volumes") or []
    mounted = [
        volume["secret"]["secretName"]
        for volume in volumes
        if volume.get("name") == TLS_VOLUME and "secret" in volume
    ]
    served = {spec.get("secretName") for _, spec in certificates if not spec.get("isCA")}
    if len(mounted) != 1:
        found.append(f"{patch_path}: no Secret volume named {TLS_VOLUME!r}")
    elif mounted[0] not in served:
        found.append(
            f"{patch_path} mounts Secret {mounted[0]!r}, but the server "
            f"Certificates write {sorted(served)}"
        )
    return found


def main():
    example_path, patch_path = sys.argv[1:]
    found = problems(example_path, patch_path)
    for problem in found:
        print(f"{example_path}: {problem}", file=sys.stderr)
    if found:
        sys.exit(1)
    print(f"{example_path}: consistent with {patch_path}")


if __name__ == "__main__":
    main()
