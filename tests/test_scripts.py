"""Smoke tests of scripts/bench.py and scripts/soak.py: they run, report every figure, fail
nothing. They never assert on speed (the machine decides that), only on shape and failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

REQUIRED = (
    "raw_verify_per_s",
    "raw_sign_per_s",
    "pyjwt_verify_per_s",
    "verify_fresh_per_s",
    "verify_reused_per_s",
    "mint_per_s",
    "token_http_per_s",
    "tools_call_p50_ms_auth",
    "tools_call_p50_ms_noauth",
    "verify_1key_per_s",
    "verify_50keys_per_s",
)
TARGETS = (
    "verify_fresh_vs_raw",
    "verify_reused_vs_raw",
    "mint_vs_raw_sign",
    "token_http_vs_raw_sign",
    "tools_call_p50_auth_vs_noauth",
    "verify_50keys_vs_1key",
)


def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_bench_quick_json_reports_every_figure_and_target() -> None:
    done = run_script(str(SCRIPTS / "bench.py"), "--quick", "--json", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert "unavailable" not in result, result.get("unavailable")
    for key in REQUIRED:
        value = result[key]
        assert isinstance(value, int | float) and value > 0, (key, value)
    # Ratios are medians of per-round ratios, so they sit near (not exactly at) the quotient
    # of the median rates; a factor of two apart would mean they were mixed up.
    quotient = result["verify_fresh_per_s"] / result["raw_verify_per_s"]
    assert 0.5 * quotient < result["verify_fresh_vs_raw"] < 2 * quotient
    assert set(TARGETS) <= set(result["targets"])
    for key in TARGETS:
        target = result["targets"][key]
        assert isinstance(target["ratio"], float), (key, target)
        assert target["ratio"] == round(result[key], 3), (key, target)
        assert isinstance(target["holds"], bool), (key, target)
    assert result["cache_memory_mb_at_default_size"] > 0
    # /token with keys in custody: files, PKCS#11 (SoftHSM2) and moto's KMS emulator.
    for backend in ("file", "pkcs11", "kms"):
        value = result.get(f"token_http_{backend}_keys_per_s")
        why = result.get(f"token_http_{backend}_unavailable")
        assert isinstance(value, int | float) and value > 0, (backend, value, why)


def test_bench_table_is_the_default_output() -> None:
    # The table is what a person sees; the JSON test above covers the figures themselves.
    done = run_script(str(SCRIPTS / "bench.py"), "--help", timeout=30)
    assert done.returncode == 0
    assert "--json" in done.stdout and "--quick" in done.stdout


def test_short_soak_with_rotations_and_an_issuer_outage_has_no_failures() -> None:
    done = run_script(
        str(SCRIPTS / "soak.py"), "--seconds", "8", "--rotate-every", "1.5",
        "--min-rotations", "2", "--clients", "2", "--json", timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["failures"] == 0, result["failure_reasons"]
    assert result["calls"] > 0
    assert result["rotations"] >= 2
    assert result["server_restarts_with_issuer_down"] == 1
    assert result["calls_with_issuer_down"] > 0
    assert result["calls_by_server"]["A"] > 0 and result["calls_by_server"]["B"] > 0
    assert result["jwks_fetches"] >= 2  # each server fetched at least once
