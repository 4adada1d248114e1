"""Configuration and the command line, run as a technician would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edged.errors import ConfigError
from tests.helpers import load_config as load

ROOT = Path(__file__).resolve().parent.parent


def edged(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True,
                          text=True, input=stdin, cwd=ROOT, timeout=60, check=False)


def test_embedded_default() -> None:
    cfg = load(None)
    assert cfg.api.listen == "127.0.0.1:8731"
    assert [(t.id, t.kind) for t in cfg.terminals] == [("sim-1", "sim")]
    assert cfg.destinations == ()
    assert str(cfg.data_dir) == "var"


def test_example_file_is_valid_and_complete() -> None:
    cfg = load(ROOT / "config.example.toml")
    assert cfg.store.id == "store-1"
    text = (ROOT / "config.example.toml").read_text()
    for key in ("listen", "tls", "allowed_hosts", "max_body_bytes", "rate_per_second",
                "payment_rate_per_second", "heartbeat_seconds", "api_version", "admin_url",
                "max_payment", "max_stored_total", "max_age_hours", "max_attempts",
                "[discovery]", "enabled", "interfaces"):
        assert key in text, key


@pytest.mark.parametrize(("text", "needle"), [
    ('[store]\nid = "s"\ncolour = "blue"\n', "store.colour: unknown key"),
    ('[api]\nlisten = "nowhere"\n', "api.listen: must be HOST:PORT"),
    ('[store]\ncurrency = "EURO"\n', "store.currency: is not an ISO 4217"),
    ('[offline]\nmax_payment = -5\n', "offline.max_payment: must be greater than 0"),
    ('[offline]\nmax_payment = "lots"\n', "offline.max_payment: expected int"),
    ('[[terminals]]\nid = "a"\nkind = "teller"\n', "terminals[0].kind: must be one of"),
    ('[[terminals]]\nid = "a"\nkind = "sim"\nspeed = 3\n', "terminals[0].speed: unknown key"),
    ('[[terminals]]\nid = "a"\nkind = "concert"\n', "terminals[0].port: is required"),
    ('[[terminals]]\nid = "a"\nkind = "concert"\nport = "/dev/x"\nbaudrate = "fast"\n',
     "terminals[0].baudrate: expected int"),
    ('[shopify]\nshop = "x.myshopify.com"\n', "shopify.location_id: is required"),
    ("surprise = 1\n", "surprise: unknown key"),
    ('[discovery]\nenabled = "yes"\n', "discovery.enabled: expected bool"),
    ('[discovery]\ninterfaces = "eth0"\n', "discovery.interfaces: expected list"),
    ('[discovery]\ninterfaces = [1]\n', "discovery.interfaces: must be a list of interface"),
    ('[discovery]\nport = 5353\n', "discovery.port: unknown key"),
    ('[api]\nlisten = "0.0.0.0:8731"\n', "api.listen = \"0.0.0.0:8731\" reaches beyond"),
    ("[store\n", "not valid TOML"),
])
def test_bad_config_names_the_key_and_the_file(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "edged.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_check_config_command(tmp_path: Path) -> None:
    good = edged("check-config", str(ROOT / "config.example.toml"))
    assert good.returncode == 0, good.stderr
    assert "OK" in good.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[api]\nlisten = "8731"\n')
    result = edged("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}: api.listen" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_and_items_import_and_audit(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    token = edged("token", "create", "lane-1", "--data-dir", data)
    assert token.returncode == 0
    assert token.stdout.strip().startswith("edg_")
    db = (tmp_path / "data" / "edged.db").read_bytes()
    assert token.stdout.strip().encode() not in db  # stored hashed
    csv = tmp_path / "cat.csv"
    csv.write_text("sku,barcode,title,price,variant_id,inventory_item_id,quantity\n"
                   "A,123,Apple,100,1,2,5\n")
    imported = edged("items", "import", str(csv), "--data-dir", data)
    assert imported.returncode == 0, imported.stderr
    assert "imported 1 items" in imported.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("sku,price\nA,1.5\n")
    refused = edged("items", "import", str(bad), "--data-dir", data)
    assert refused.returncode == 1
    assert "line 2: price: must be a whole number" in refused.stderr
    verified = edged("audit", "verify", "--data-dir", data)
    assert verified.returncode == 0
    assert "audit chain OK: 2 entries" in verified.stdout


def test_items_import_json(tmp_path: Path) -> None:
    src = tmp_path / "cat.json"
    src.write_text('[{"sku": "B", "barcode": "99", "title": "Bread", "price": 250,'
                   ' "variant_id": "gid://shopify/ProductVariant/7", "inventory_item_id": 8,'
                   ' "quantity": 3}]')
    from edged.stock import catalog_import

    rows = catalog_import.parse(src)
    assert rows[0].variant_id == "gid://shopify/ProductVariant/7"
    assert rows[0].inventory_item_id == "gid://shopify/InventoryItem/8"
    assert rows[0].quantity == 3


def test_discovery_defaults_follow_the_listen_address(tmp_path: Path) -> None:
    path = tmp_path / "edged.toml"
    path.write_text('[api]\nlisten = "0.0.0.0:8731"\ntls = true\n')
    assert load(path).advertise
    assert not load(None).advertise
    path.write_text('[api]\nlisten = "0.0.0.0:8731"\ntls = true\n[discovery]\nenabled = false\n'
                    'interfaces = ["eth0", "192.0.2.1"]\n')
    cfg = load(path)
    assert not cfg.advertise and cfg.discovery.interfaces == ("eth0", "192.0.2.1")
    path.write_text('[discovery]\nenabled = true\n')
    assert load(path).advertise
