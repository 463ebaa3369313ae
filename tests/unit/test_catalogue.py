import pytest

from orchestrator.domain.catalogue import MODULES, UnknownModule, resolve


def test_tables_match_the_seed() -> None:
    assert len(MODULES) == 63
    r = resolve("China Mobile", "M5310")
    assert (r.manuf("code"), r.model("code")) == ("001", "00107")
    assert resolve("001", "00107") == r
    assert resolve("china  mobile", "m5310") == r
    assert resolve("nordic", "nrf52832").module.model_code == "10201"
    q = resolve("Quectel Wireless Solutions Co., Ltd.", "BC95-B8")
    assert q.manuf("name") == "Quectel Wireless Solutions Co., Ltd." and q.model("code") == "01406"


def test_unknown_names_are_clear() -> None:
    with pytest.raises(UnknownModule, match="manufacturer 'Nokia'"):
        resolve("Nokia", "M5310")
    with pytest.raises(UnknownModule, match="model 'BC28' of 'China Mobile'"):
        resolve("China Mobile", "BC28")
