"""Power and energy telemetry: sources behind one interface, discovered at run time, and a sampler.

    found = discover_power_sources()       # found.sources, found.declined (each with its reason)
    with PowerSampler(found.sources) as sampler:
        sampler.measure_idle(2.0)
        sampler.mark("prefill"); ...; sampler.mark("decode"); ...
    for row in sampler.summaries(): ...    # energy_mj, net_energy_mj, watts, coverage, method, scope
"""

from fleetfit.agent.telemetry.discover import discover_power_sources
from fleetfit.agent.telemetry.sampler import PhaseSummary, PowerSampler, joules_per_token, tokens_per_joule
from fleetfit.agent.telemetry.source import Declined, Discovery, EnergyReading, PowerReading, PowerSource, SampleSkipped

__all__ = [
    "Declined",
    "Discovery",
    "EnergyReading",
    "PhaseSummary",
    "PowerReading",
    "PowerSampler",
    "PowerSource",
    "SampleSkipped",
    "discover_power_sources",
    "joules_per_token",
    "tokens_per_joule",
]
