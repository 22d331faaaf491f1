"""Set the floor (minReplicas) of this namespace's autoscalers: `set_floor.py DATE NAME=MIN ...`.

Runs in the drop's CronJobs under a ServiceAccount that may only `patch` those autoscalers, so it
sends one JSON merge patch per autoscaler and reads nothing. The patches name their field manager,
`floodgate-drop-scaler`: once it has changed a floor it owns it, so a server-side apply of a
rendering with another floor is refused instead of undoing it. A CronJob schedule names a minute
of a day of a month and would fire again a year later: the job does nothing but from two days
before DATE (UTC) to the day after it. Two days before, so that the runbook's check of the
scaler's account the day before the drop (a job made from the lower-floor CronJob, whose DATE is
the next UTC day after an evening drop) reaches the API server instead of skipping.
"""
import datetime
import json
import os
import ssl
import sys
import urllib.request

ACCOUNT = os.environ.get("SERVICE_ACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount")
FIELD_MANAGER = "floodgate-drop-scaler"


def api_url() -> str:
    if os.environ.get("KUBERNETES_API_URL"):
        return os.environ["KUBERNETES_API_URL"].rstrip("/")
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def log(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        log("usage", message="set_floor.py DATE NAME=MIN ...")
        return 2
    due = datetime.date.fromisoformat(argv[0])
    today = datetime.datetime.now(datetime.timezone.utc).date()
    if not -2 <= (today - due).days <= 1:
        log("skipped", reason="not the drop's date", due=str(due), today=str(today))
        return 0
    with open(f"{ACCOUNT}/namespace") as f:
        namespace = f.read().strip()
    with open(f"{ACCOUNT}/token") as f:
        token = f.read().strip()
    base = api_url()
    context = ssl.create_default_context(cafile=f"{ACCOUNT}/ca.crt") if base.startswith("https:") else None
    for pair in argv[1:]:
        name, _, floor = pair.partition("=")
        body = json.dumps({"spec": {"minReplicas": int(floor)}}).encode()
        request = urllib.request.Request(
            f"{base}/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/{name}"
            f"?fieldManager={FIELD_MANAGER}",
            data=body,
            method="PATCH",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            patched = json.load(response)
        log("floor set", autoscaler=name, min_replicas=patched["spec"]["minReplicas"],
            max_replicas=patched["spec"].get("maxReplicas"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
