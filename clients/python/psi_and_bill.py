#!/usr/bin/env python3
"""A PSI job and its bill through a Python client generated from the operator's OpenAPI document.

The script fetches ``/openapi.json`` from the operator (over TLS, trusting the operator's CA),
generates a client package with openapi-python-client (``pip install -r requirements.txt``),
and with it, as the buyer whose API token is in ``TESSERA_TOKEN``: submits a PSI job under a
licence, polls it to its end, and reads the bill line the job was charged on. It prints the
steps on stderr and, last on stdout, one JSON line: the job id, state, result size, charge
(integer micros) and the bill line's amounts.

Example (with the operator of the README's walk-through)::

    pip install -r clients/python/requirements.txt
    TESSERA_TOKEN=$(cat alice.token) python3 clients/python/psi_and_bill.py \\
        --operator https://127.0.0.1:7100 --ca-file .tessera/operator/ca.pem \\
        --licence lic-... --buyer-party buyer-b --buyer-dataset ds-b \\
        --columns customer_id --provider-columns id --key-case fold

Exit status: 0 when the job succeeded and its bill line was found, 1 otherwise.
"""

import argparse
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def generate_client(operator, ctx, client_dir):
    """Fetches the OpenAPI document and generates the package ``tessera_client`` in client_dir."""
    client_dir.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(operator + "/openapi.json", context=ctx, timeout=30) as r:
        spec = r.read()
    (client_dir / "openapi.json").write_bytes(spec)
    search = os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")])
    generator = shutil.which("openapi-python-client", path=search)
    if generator is None:
        sys.exit("openapi-python-client is not installed: pip install -r clients/python/requirements.txt")
    subprocess.run(
        [generator, "generate", "--path", str(client_dir / "openapi.json"),
         "--output-path", str(client_dir / "tessera_client"), "--meta", "none", "--overwrite"],
        check=True, stdout=sys.stderr,
    )
    sys.path.insert(0, str(client_dir))
    log(f"generated tessera_client from {operator}/openapi.json into {client_dir}")


def answer(envelope, what):
    """The data of a success envelope; exits with the envelope's code and message otherwise."""
    if envelope is None:
        sys.exit(f"{what}: no answer")
    if envelope.code != "OK":
        sys.exit(f"{what}: {envelope.status} {envelope.code}: {envelope.error_msg}")
    return envelope.data


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--operator", default=os.environ.get("TESSERA_OPERATOR", "https://127.0.0.1:7100"))
    p.add_argument("--ca-file", default=os.environ.get("TESSERA_CA_FILE", ".tessera/operator/ca.pem"),
                   help="the operator's CA certificate (its DATA_DIR/ca.pem)")
    p.add_argument("--licence", required=True)
    p.add_argument("--buyer-party", required=True)
    p.add_argument("--buyer-dataset", required=True)
    p.add_argument("--columns", required=True,
                   help="the buyer's key columns, comma-separated (also the provider's, unless "
                        "--provider-columns names them)")
    p.add_argument("--provider-columns", help="the provider's key columns, comma-separated")
    p.add_argument("--mode", default="size", choices=["size", "intersection"])
    p.add_argument("--key-case", default="preserve", choices=["preserve", "lower", "upper", "fold"],
                   help="how both sides' keys are compared (fold: caseless)")
    p.add_argument("--client-dir", default="build/python-client", type=pathlib.Path)
    p.add_argument("--timeout-s", type=float, default=120.0)
    a = p.parse_args()
    token = os.environ.get("TESSERA_TOKEN", "").strip()
    if not token:
        sys.exit("TESSERA_TOKEN must hold the buyer's API token")

    ctx = ssl.create_default_context(cafile=a.ca_file)
    generate_client(a.operator.rstrip("/"), ctx, a.client_dir)
    from tessera_client import AuthenticatedClient
    from tessera_client.api.bills import list_bill_lines, list_bills
    from tessera_client.api.jobs import get_job, submit_job
    from tessera_client.models import (
        EmptyKeysName, KeyCaseName, PsiModeName, SubmitJobRequest, UnicodeFormName,
    )

    client = AuthenticatedClient(base_url=a.operator.rstrip("/"), token=token, prefix="",
                                 auth_header_name="X-Auth-Token", verify_ssl=ctx)
    def split(text):
        return [c.strip() for c in text.split(",") if c.strip()]

    columns = split(a.columns)
    provider_columns = split(a.provider_columns) if a.provider_columns else columns
    request = SubmitJobRequest(
        licence_id=a.licence, scene="psi", buyer_party=a.buyer_party,
        buyer_dataset_id=a.buyer_dataset, buyer_columns=columns,
        provider_columns=provider_columns,
        mode=PsiModeName(f"PSI_MODE_{a.mode.upper()}"), key_case=KeyCaseName(f"KEY_CASE_{a.key_case.upper()}"),
        unicode_form=UnicodeFormName.UNICODE_FORM_NONE, empty_keys=EmptyKeysName.EMPTY_KEYS_SKIP,
    )
    job = answer(submit_job.sync(client=client, body=request), "submit")
    log(f"submitted {job.job_id}: {job.state}")
    if str(job.state) == "JOB_STATE_REFUSED":
        sys.exit(f"refused: {'; '.join(job.refusal_reasons)}")
    deadline = time.monotonic() + a.timeout_s
    terminal = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_REFUSED", "JOB_STATE_CANCELLED"}
    while str(job.state) not in terminal:
        if time.monotonic() > deadline:
            sys.exit(f"job {job.job_id} still {job.state} after {a.timeout_s} s")
        time.sleep(0.2)
        job = answer(get_job.sync(job.job_id, client=client), "get job")
    log(f"job {job.job_id}: {job.state}, result size {job.result_size}, charge {job.charge_micros} micros")
    if str(job.state) != "JOB_STATE_SUCCEEDED":
        sys.exit(f"job {job.job_id} ended {job.state}: {job.error}")

    line = None
    for bill in answer(list_bills.sync(client=client), "bills").bills:
        lines = answer(list_bill_lines.sync(bill.bill_id, client=client), "bill lines").lines
        line = next((l for l in lines if l.job_id == job.job_id), None)
        if line is not None:
            log(f"bill {bill.bill_id} ({bill.state}) has the job's line {line.line_id}")
            break
    if line is None:
        sys.exit(f"no bill line for job {job.job_id}")
    print(json.dumps({
        "job_id": job.job_id,
        "state": str(job.state),
        "result_size": job.result_size,
        "charge_micros": job.charge_micros,
        "bill_id": line.bill_id,
        "bill_line_original_micros": line.amounts.original_micros,
        "bill_line_cash_micros": line.amounts.cash_micros,
    }))


if __name__ == "__main__":
    main()
