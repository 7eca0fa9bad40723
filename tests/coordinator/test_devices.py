"""Devices are keyed by id: display names tell apart devices that share a hostname, and lookups by hostname
work only when one device has it."""

import pytest

from fleetfit.coordinator.answers.devices import DeviceLookupError, display_names, find, short_id
from fleetfit.coordinator.answers.limits import limit_rows
from fleetfit.v1 import fleetfit_pb2 as pb


def device(device_id: str, hostname: str, **labels) -> pb.Device:
    return pb.Device(inventory=pb.DeviceInventory(device_id=device_id, hostname=hostname), labels=labels)


CLONES = [device("rpi-8f2a91c0", "rpi"), device("rpi-77d3e5b1", "rpi", site="lab"), device("ws-1", "ws")]


def test_display_names_add_the_short_id_only_where_a_hostname_is_shared_and_show_labels():
    assert display_names(CLONES) == {"rpi-8f2a91c0": "rpi (8f2a91c0)", "rpi-77d3e5b1": "rpi (77d3e5b1) [site=lab]",
                                     "ws-1": "ws"}


def test_short_ids_that_would_collide_fall_back_to_the_whole_id():
    twins = [device("board-00000000001-a", "board"), device("board-00000000001-b", "board")]
    assert short_id("board-00000000001-a", "board") == short_id("board-00000000001-b", "board")
    assert set(display_names(twins).values()) == {"board (board-00000000001-a)", "board (board-00000000001-b)"}


def test_find_takes_an_id_or_a_hostname_only_one_device_has():
    assert find(CLONES, "rpi-77d3e5b1").inventory.device_id == "rpi-77d3e5b1"
    assert find(CLONES, "ws").inventory.device_id == "ws-1"
    with pytest.raises(DeviceLookupError) as err:
        find(CLONES, "rpi")
    assert "2 devices have hostname 'rpi'" in str(err.value) and "rpi-77d3e5b1, rpi-8f2a91c0" in str(err.value)
    with pytest.raises(DeviceLookupError, match="no device 'ghost'"):
        find(CLONES, "ghost")


def test_limit_rows_of_two_devices_with_one_hostname_stay_apart():
    results = [pb.ProfileResult(result_id=f"r{i}", device_id=d.inventory.device_id, model_name="smollm2-135m",
                                quant="Q4_0", request=pb.ProfileRequest(backend="llama.cpp"), n_prompt=512, n_gen=128,
                                threads=2, decode_tokens_per_s=pb.Stat(mean=100.0 + i, samples=[100.0 + i]))
               for i, d in enumerate(CLONES[:2])]
    rows = limit_rows(results, CLONES)
    assert [(r.device_id, r.device_name, r.decode_tokens_per_s.mean) for r in rows] == [
        ("rpi-77d3e5b1", "rpi (77d3e5b1) [site=lab]", 101.0), ("rpi-8f2a91c0", "rpi (8f2a91c0)", 100.0)]
    assert {r.shape for r in rows} == {"pp512/tg128 t2 cpu"}


HONEST = device("lab-gpu-1-7f3a9c21", "lab-gpu-1", site="lab")
IMPOSTORS = {  # hostnames (and ids) a device chooses to pass for another
    "its display name": [device("imp-1", "lab-gpu-1 [site=lab]")],
    "its name with another's short id": [device("rpi-8f2a91c0", "rpi"), device("imp-2", "rpi (8f2a91c0)"),
                                         device("rpi-11111111", "rpi")],
    "its id as hostname": [device("imp-3", "lab-gpu-1-7f3a9c21")],
    "its hostname as id": [device("lab-gpu-1", "other")],
    "look-alikes": [device("imp-4", "ＬＡＢ-gpu-1 [site=lab]"), device("imp-5", "lab-gpu-1\u200b [site=lab]"),
                    device("imp-6", "LAB-GPU-1  [site=lab] "), device("imp-7", "lab-gpu-1\u202e [site=lab]")],
    "the same hostname and labels": [device("lab-gpu-1-00000000", "lab-gpu-1", site="lab")],
    "a name like the qualified one": [device("imp-8", "lab-gpu-1 (7f3a9c21) [site=lab]"),
                                      device("lab-gpu-1-7f3a9c21x", "lab-gpu-1", site="lab")],
    # letters of other scripts drawn like Latin ones, characters drawn as nothing, marks and misread ASCII
    "homoglyphs": [device("imp-9", "l\u0430b-gpu-1 [site=lab]"), device("imp-10", "lab-gpu-1 [sit\u0435=l\u03b1b]"),
                   device("imp-11", "Iab-gpu-l [site=lab]"), device("imp-12", "lab-gpu-1\u3164 [site=lab]"),
                   device("imp-13", "la\u034fb-gpu-1\ufe0f [site=lab]"), device("imp-14", "la\u0301b-gpu-1 [site=lab]"),
                   device("imp-15", "lab-gpu-1\u2028[site=lab]")],
    "another's short id": [device("imp-16", "7f3a9c21"), device("imp-17", "7F3A9C2l")],
    "another's id or short id, with labels": [device("imp-20", "lab-gpu-1-7f3a9c21", site="lab"),
                                              device("imp-21", "7f3a9c21", site="lab")],
    "its name with its short id, before a twin comes": [device("imp-18", "lab-gpu-1 (7f3a9c21) [site=lab]"),
                                                         device("imp-19", "lab-gpu-1 (lab-gpu-1-7f3a9c21)",
                                                                site="lab")],
}


@pytest.mark.parametrize("case", IMPOSTORS)
def test_display_names_are_unique_and_never_another_devices_id(case):
    from fleetfit.coordinator.answers.devices import _look

    fleet = [HONEST, *IMPOSTORS[case]]
    names = display_names(fleet)
    looks = [_look(n) for n in names.values()]
    assert len(set(looks)) == len(fleet), names  # no two look alike
    for device_id, name in names.items():
        assert all(_look(name) != _look(other) for other in names if other != device_id), names
    for d in fleet:  # each answers to its id and to its display name, and to nothing of another's
        assert find(fleet, d.inventory.device_id) is d
        assert find(fleet, names[d.inventory.device_id]) is d
    if case in ("homoglyphs", "another's short id", "another's id or short id, with labels",
                "its name with its short id, before a twin comes"):  # told apart by what is written, not only by the fold
        assert all(f"({d.inventory.device_id})" in names[d.inventory.device_id] for d in IMPOSTORS[case]), names
    if case == "its name with its short id, before a twin comes":  # the honest device keeps its own name
        assert names[HONEST.inventory.device_id] == "lab-gpu-1 [site=lab]", names


@pytest.mark.parametrize("case", IMPOSTORS)
def test_a_name_shown_before_an_impostor_came_never_finds_the_impostor(case):
    """`lab-gpu-1 [site=lab]` named the honest device until another device made it ambiguous: now it answers
    for the honest device only where no other could be meant, else a one-line error listing the ids."""
    alone = display_names([HONEST])[HONEST.inventory.device_id]
    fleet = [HONEST, *IMPOSTORS[case]]
    try:
        assert find(fleet, alone) is HONEST
    except DeviceLookupError as exc:
        assert HONEST.inventory.device_id in str(exc) and "\n" not in str(exc)


def test_a_hostname_beyond_ascii_always_shows_its_short_id_and_a_short_id_finds_no_impostor():
    """No fold knows every script's look-alikes, so a hostname that is not ASCII once folded never shows bare; and
    a short id a person read off a table (`lab-gpu-1 (7f3a9c21)`) never answers for a device whose hostname it is."""
    fleet = [HONEST, device("imp-1", "\u0561b-gpu-1", site="lab"), device("imp-2", "7f3a9c21")]
    names = display_names(fleet)
    assert names["imp-1"] == "\u0561b-gpu-1 (imp-1) [site=lab]" and names["imp-2"] == "7f3a9c21 (imp-2)", names
    with pytest.raises(DeviceLookupError) as err:
        find(fleet, "7f3a9c21")
    assert "imp-2, lab-gpu-1-7f3a9c21" in str(err.value)
