"""Who may call which RPC: every RPC of the contract has a policy here, and the server refuses to start
with an RPC that has none.

Callers send "authorization: Bearer <credential>":
- `agent.<device_id>.<secret>`: an enrolled agent (its secret comes from spending a join token); it
  may call the agent RPCs, and only as itself — the request's device id must be its own;
- `operator.<secret>`: the operator (the token `fleetfit serve` writes beside its database); it may
  call the fleet RPCs;
- Join is public: it is authenticated by the join token it carries;
- FetchModel takes either: an agent as itself (the server then serves only files its leased jobs name), or the
  operator.
"""

import asyncio
import hmac
import time

import grpc

from fleetfit.coordinator.service import errors
from fleetfit.coordinator.service.store import Store, token_hash
from fleetfit.coordinator.service import ingest

PUBLIC, AGENT, OPERATOR = "public", "agent", "operator"
AGENT_OR_OPERATOR = "agent or operator"

# RPC -> (who may call it, the request field that names the calling device)
POLICY: dict[str, tuple[str, str | None]] = {
    "fleetfit.v1.AgentService.Join": (PUBLIC, None),
    "fleetfit.v1.AgentService.Register": (AGENT, "inventory.device_id"),
    "fleetfit.v1.AgentService.PollJob": (AGENT, "device_id"),
    "fleetfit.v1.AgentService.ReportResult": (AGENT, "result.device_id"),
    "fleetfit.v1.AgentService.Heartbeat": (AGENT, "device_id"),
    "fleetfit.v1.AgentService.ReleaseJob": (AGENT, "device_id"),
    "fleetfit.v1.AgentService.ReportQuality": (AGENT, "result.device_id"),
    "fleetfit.v1.AgentService.FetchModel": (AGENT_OR_OPERATOR, "device_id"),
}
OPERATOR_SERVICE = "fleetfit.v1.FleetService"


def policy(method_full_name: str) -> tuple[str, str | None]:
    if method_full_name.startswith(OPERATOR_SERVICE + "."):
        return OPERATOR, None
    return POLICY[method_full_name]


def _field(message, path: str) -> str:
    for name in path.split("."):
        message = getattr(message, name)
    return message


def credential(context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return ""


PROVEN_FOR_S = 5.0  # how long a proven agent credential is trusted without asking the database again


def check_agent(store: Store, cred: str, proven: dict[str, float]) -> str | None:
    """The device id an agent credential proves, or None.

    `proven` remembers credentials that matched for PROVEN_FOR_S, so that an agent's stream of reports
    does not cost a database round trip each; a secret replaced or revoked through another replica stops working
    within that time (through this coordinator at once: see forget).
    """
    if not cred.startswith("agent."):
        return None
    device_id, _, secret = cred[len("agent."):].rpartition(".")
    now = time.monotonic()
    if proven.get(cred, 0.0) > now:
        return device_id
    stored = store.agent_secret_hash(device_id) if device_id and secret else None
    if not (stored and hmac.compare_digest(stored, token_hash(secret))):
        return None
    if len(proven) > 100_000:
        proven.clear()
    proven[cred] = now + PROVEN_FOR_S
    return device_id


def proven_agent(cred: str, proven: dict[str, float]) -> str | None:
    """The device id of a credential proven within PROVEN_FOR_S (no database call), or None."""
    if proven.get(cred, 0.0) > time.monotonic():
        return cred[len("agent."):].rpartition(".")[0]
    return None


def forget(proven: dict[str, float], device_id: str) -> None:
    """Trust nothing remembered for `device_id`: its credential was revoked or replaced."""
    prefix = f"agent.{device_id}."
    for cred in [c for c in proven if c.startswith(prefix) and "." not in c[len(prefix):]]:
        proven.pop(cred, None)


def is_operator(context) -> bool:
    """Whether the call carries an operator credential: for an RPC of both roles, once guard has checked it."""
    return credential(context).startswith("operator.")


def check_operator(store: Store, cred: str) -> bool:
    return cred.startswith("operator.") and store.is_operator_token(cred[len("operator."):])


def guard(servicer, service, store: Store, proven: dict[str, float] | None = None):
    """`servicer` with each RPC of `service` (a descriptor) wrapped in its policy check and in the one mapping of
    unhandled exceptions to statuses (errors.answer); `proven` is the cache of proven agent credentials
    (check_agent), shared with whoever revokes them."""

    class Guarded:
        pass

    guarded, proven, quiet = Guarded(), {} if proven is None else proven, errors.QuietLog()
    for method in service.methods:
        role, device_field = policy(method.full_name)  # KeyError: a new RPC must be given a policy
        checked = _wrap(getattr(servicer, method.name), role, device_field, store, proven)
        setattr(guarded, method.name, _mapped(checked, method.full_name, quiet))
    return guarded


def _mapped(handler, method: str, quiet: errors.QuietLog):
    """`handler` whose unhandled exceptions leave as the status errors.status_for gives, never as UNKNOWN."""
    async def mapped(request, context):
        try:
            return await handler(request, context)
        except grpc.aio.AbortError:  # context.abort: the status is already set
            raise
        except Exception as exc:
            code, message = errors.answer(exc, method, quiet)
            await context.abort(code, message)

    return mapped


def _wrap(handler, role: str, device_field: str | None, store: Store, proven: dict[str, float]):
    async def checked(request, context):
        if where := ingest.nul_text(request):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where} holds a NUL character: text must not")
        cred = credential(context)
        loop = asyncio.get_running_loop()
        who = role if role != AGENT_OR_OPERATOR else OPERATOR if is_operator(context) else AGENT  # is_operator: checked
        if who == AGENT:
            device_id = proven_agent(cred, proven) or await loop.run_in_executor(None, check_agent, store, cred, proven)
            if device_id is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "not an enrolled agent (run fleetfit-agent join)")
            claimed = _field(request, device_field)
            if not claimed:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{device_field} is empty")
            if claimed != device_id:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"agent {device_id} cannot act as device {claimed!r}")
        elif who == OPERATOR and not await loop.run_in_executor(None, check_operator, store, cred):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "operator token missing or wrong (see FLEETFIT_TOKEN / the token file of fleetfit serve)")
        return await handler(request, context)

    return checked
