"""EntropyRateEstimator against golden/entropy_estimator (official recompute_entropy_from_buffer), the FIFO, the
gate, checkpointing, gathering across ranks, and the table files/config round trips."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from bitstream_diffusion.schedulers import EntropyTables
from bitstream_diffusion.training import (
    EntropyRateEstimator,
    check_entropy_tables,
    gather_across_ranks,
    load_entropy_tables,
    lognormal_fit,
    lognormal_prior_tables,
    save_entropy_tables,
    tables_from_config,
    tables_to_config,
)

TABLE_TOL = {
    "pdf": dict(atol=1e-7, rtol=1e-6),
    "cdf": dict(atol=1e-7, rtol=1e-6),
    "sigmas": dict(atol=0.0, rtol=1e-6),
    "edges": dict(atol=0.0, rtol=1e-6),
}


@pytest.fixture(scope="module")
def estimator_golden(golden_dir):
    folder = golden_dir / "entropy_estimator"
    return {
        "pt": torch.load(folder / "entropy_cases.pt", map_location="cpu", weights_only=True),
        "json": json.loads((folder / "entropy_cases.json").read_text()),
        "folder": folder,
    }


def _estimator(settings: dict, **kwargs) -> EntropyRateEstimator:
    return EntropyRateEstimator(
        num_bins=settings["num_bins"],
        min_per_bin=settings["min_per_bin"],
        c=settings["c"],
        n=settings["n"],
        target=settings["target"],
        **kwargs,
    )


def _assert_tables_close(got: dict, expected: dict) -> None:
    assert set(got) == {"pdf", "cdf", "sigmas", "edges"}
    for name, tol in TABLE_TOL.items():
        assert got[name].dtype == torch.float32 and got[name].shape == expected[name].shape, name
        torch.testing.assert_close(got[name], expected[name], msg=name, **tol)


@pytest.mark.parametrize("case", ["main", "alt"])
def test_compute_tables_matches_golden(estimator_golden, case):
    golden, meta = estimator_golden["pt"], estimator_golden["json"][case]
    buffer = golden["buffer"]
    tables = _estimator(meta["settings"]).compute_tables(buffer["sigma"], buffer["metric"])
    _assert_tables_close(tables, golden["tables"][case])
    on_disk = load_entropy_tables(estimator_golden["folder"] / f"tables_{case}")
    _assert_tables_close(tables, on_disk)
    assert int((tables["pdf"] == 0).sum()) == meta["n_zero_pdf_bins"]  # absorbing zero bins, exactly
    assert torch.equal(tables["pdf"] == 0, golden["tables"][case]["pdf"] == 0)
    assert tables["cdf"][-1].item() == 1.0
    mu, std = lognormal_fit(tables["pdf"], tables["sigmas"])
    assert mu == pytest.approx(meta["lognormal_fit_mu"], abs=1e-6)
    assert std == pytest.approx(meta["lognormal_fit_std"], abs=1e-6)


def test_gate_at_num_bins_times_min_per_bin(estimator_golden):
    buffer, gate = estimator_golden["pt"]["buffer"], estimator_golden["json"]["gate"]
    for count in (12_799, 12_800):
        estimator = EntropyRateEstimator()
        assert estimator.min_samples == 12_800
        estimator.update(buffer["sigma"][:count], buffer["metric"][:count])
        assert len(estimator) == count
        assert estimator.maybe_refresh(1999) is False  # not a refresh step
        assert estimator.maybe_refresh(2000) is gate[str(count)]["updated"]
        assert estimator.ready is gate[str(count)]["updated"]
        if gate[str(count)]["updated"]:
            torch.testing.assert_close(
                estimator.tables["pdf"], torch.tensor(gate[str(count)]["pdf"]), atol=1e-7, rtol=1e-6
            )
            assert estimator.num_refreshes == 1 and estimator.last_refresh_step == 2000
        else:
            assert estimator.tables is None


def test_fifo_wraps_and_keeps_the_newest_samples():
    estimator = EntropyRateEstimator(num_bins=4, min_per_bin=1, buffer_size=5)
    estimator.update(torch.arange(1.0, 4.0), torch.zeros(3))
    estimator.update(torch.arange(4.0, 8.0), torch.zeros(4))  # wraps: 6, 7 overwrite 1, 2
    sigma, _ = estimator.buffer()
    assert sigma.tolist() == [6.0, 7.0, 3.0, 4.0, 5.0] and len(estimator) == 5 and estimator.num_seen == 7
    estimator.update(torch.arange(10.0, 22.0), torch.zeros(12))  # more than the capacity at once
    assert sorted(estimator.buffer()[0].tolist()) == [17.0, 18.0, 19.0, 20.0, 21.0]


def test_state_dict_round_trip_continues_identically(tmp_path):
    gen = torch.Generator().manual_seed(0)

    def batch():
        sigma = torch.exp(torch.randn(96, generator=gen) * 2.0)
        return sigma, 0.25 * sigma**2 / (sigma**2 + 0.16) * (1 + 0.05 * torch.randn(96, generator=gen))

    original = EntropyRateEstimator(num_bins=16, min_per_bin=10, buffer_size=500, update_every=3)
    for step in range(1, 8):
        original.update(*batch())
        original.maybe_refresh(step)
    assert original.ready and original.num_refreshes == 2 and len(original) == 500  # wrapped
    torch.save(original.state_dict(), tmp_path / "estimator.pt")

    resumed = EntropyRateEstimator(num_bins=16, min_per_bin=10, buffer_size=500, update_every=3)
    resumed.load_state_dict(torch.load(tmp_path / "estimator.pt", weights_only=True))
    for name in ("pdf", "cdf", "sigmas", "edges"):
        assert torch.equal(resumed.tables[name], original.tables[name])
    for step in range(8, 14):
        sigma, metric = batch()
        for estimator in (original, resumed):
            estimator.update(sigma, metric)
            estimator.maybe_refresh(step)
    assert original.num_refreshes == resumed.num_refreshes == 4
    assert original.num_seen == resumed.num_seen and len(original) == len(resumed)
    assert all(torch.equal(a, b) for a, b in zip(original.buffer(), resumed.buffer(), strict=True))
    for name in ("pdf", "cdf", "sigmas", "edges"):
        assert torch.equal(resumed.tables[name], original.tables[name])

    smaller = EntropyRateEstimator(num_bins=16, min_per_bin=10, buffer_size=200)
    smaller.load_state_dict(original.state_dict())
    newest = torch.roll(original.buffer()[0], -original.state_dict()["write_pos"])[-200:]
    assert torch.equal(smaller.buffer()[0], newest)


class _FakeProcessGroup:
    """Two "ranks" in two threads; the gather function exchanges their rows like an all-gather."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size)
        self.slots: list[torch.Tensor | None] = [None] * world_size

    def gather_fn(self, rank: int):
        def gather(rows: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = rows
            self.barrier.wait()
            out = torch.cat(self.slots, dim=0)
            self.barrier.wait()
            return out

        return gather


def test_every_rank_sees_every_ranks_samples():
    group = _FakeProcessGroup(2)
    ranks = [
        EntropyRateEstimator(num_bins=8, min_per_bin=4, buffer_size=64, update_every=2, gather_fn=group.gather_fn(r))
        for r in range(2)
    ]
    gen = torch.Generator().manual_seed(1)
    batches = [
        [(torch.rand(n, generator=gen) * 10 + 0.01, torch.rand(n, generator=gen)) for n in (7, 5)] for _ in range(6)
    ]

    def run(rank: int) -> None:
        for step, per_rank in enumerate(batches, start=1):
            ranks[rank].update(*per_rank[rank])
            ranks[rank].maybe_refresh(step)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    reference = EntropyRateEstimator(num_bins=8, min_per_bin=4, buffer_size=64, update_every=2)
    for step, per_rank in enumerate(batches, start=1):
        reference.update(torch.cat([s for s, _ in per_rank]), torch.cat([m for _, m in per_rank]))
        reference.maybe_refresh(step)
    assert len(reference) == 64 and reference.num_seen == 72 and reference.num_refreshes == 2
    for estimator in ranks:
        assert all(torch.equal(a, b) for a, b in zip(estimator.buffer(), reference.buffer(), strict=True))
        assert all(torch.equal(estimator.tables[k], reference.tables[k]) for k in reference.tables)


def test_table_files_and_config_round_trip(tmp_path, entropy_tables_dir):
    official = load_entropy_tables(entropy_tables_dir / "lm1b")
    assert [official[k].shape[0] for k in ("pdf", "cdf", "sigmas", "edges")] == [128, 128, 128, 129]
    save_entropy_tables(official, tmp_path / "tables")
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "entropy_cdf.pt",
        "entropy_edges.pt",
        "entropy_pdf.pt",
        "entropy_sigmas.pt",
    ]
    again = load_entropy_tables(tmp_path / "tables")
    assert all(torch.equal(again[k], official[k]) for k in official)
    plain = torch.load(tmp_path / "tables" / "entropy_pdf.pt", weights_only=True)
    assert type(plain) is torch.Tensor and plain.dtype == torch.float32

    config = tables_to_config(official)
    assert sorted(config) == ["entropy_cdf", "entropy_edges", "entropy_pdf", "entropy_sigmas"]
    restored = tables_from_config(json.loads(json.dumps(config)))
    assert all(torch.equal(restored[k], official[k]) for k in official)

    (tmp_path / "tables" / "entropy_edges.pt").unlink()  # older runs: edges rebuilt from the midpoints
    rebuilt = load_entropy_tables(tmp_path / "tables")
    torch.testing.assert_close(rebuilt["edges"][1:-1], official["edges"][1:-1], rtol=1e-6, atol=0.0)

    (tmp_path / "tables" / "notes.txt").write_text("kept")  # saving again replaces the four files, nothing else
    owt = EntropyTables.from_folder(entropy_tables_dir / "owt")
    owt.save(tmp_path / "tables")
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == [
        "entropy_cdf.pt",
        "entropy_edges.pt",
        "entropy_pdf.pt",
        "entropy_sigmas.pt",
        "notes.txt",
    ]
    assert all(torch.equal(load_entropy_tables(tmp_path / "tables")[k], getattr(owt, k)) for k in official)


def test_clear_errors():
    with pytest.raises(ValueError, match="target"):
        EntropyRateEstimator(target="entropy")
    with pytest.raises(ValueError, match="num_bins"):
        EntropyRateEstimator(num_bins=1)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EntropyRateEstimator(sigma_min=80.0, sigma_max=0.002)
    estimator = EntropyRateEstimator(num_bins=4, min_per_bin=1)
    with pytest.raises(ValueError, match="same number of samples"):
        estimator.compute_tables(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="no finite"):
        estimator.compute_tables(torch.tensor([float("nan")]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="one value per example"):
        estimator.update(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="NaN or inf"):
        check_entropy_tables(
            {
                "pdf": torch.tensor([float("nan")] * 4),
                "cdf": torch.ones(4),
                "sigmas": torch.ones(4),
                "edges": torch.ones(5),
            }
        )
    with pytest.raises(ValueError, match="missing \\['edges'\\]"):
        check_entropy_tables({"pdf": torch.ones(4), "cdf": torch.ones(4), "sigmas": torch.ones(4)})
    assert EntropyRateEstimator(target=0.75).power == 0.75 and EntropyRateEstimator(target="rate").power == 1.0


def _swap_pdf_cdf(t):
    return {**t, "pdf": t["cdf"], "cdf": t["pdf"]}


def _non_monotone_cdf(t):
    cdf = t["cdf"].clone()
    cdf[60] = cdf[59] - 0.01
    return {**t, "cdf": cdf}


def _descending_sigmas(t):
    return {**t, "sigmas": t["sigmas"].flip(0), "edges": t["edges"].flip(0)}


def _pdf_summing_to_two(t):
    return {**t, "pdf": 2 * t["pdf"], "cdf": torch.cumsum(2 * t["pdf"], 0)}


def _single_bin(t):
    return {"pdf": torch.ones(1), "cdf": torch.ones(1), "sigmas": torch.ones(1), "edges": torch.tensor([0.5, 2.0])}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_swap_pdf_cdf, "swapped"),
        (_non_monotone_cdf, "non-decreasing"),
        (_descending_sigmas, "entropy_sigmas.*strictly increasing"),
        (_pdf_summing_to_two, "sums to 2"),
        (_single_bin, "K >= 2"),
    ],
)
def test_broken_tables_are_rejected_on_every_path(entropy_tables_dir, tmp_path, edit, match):
    """The validator the scheduler uses also guards the training side: the dict check, the table files and an
    estimator checkpoint (all three accepted these tables before)."""
    broken = edit(load_entropy_tables(entropy_tables_dir / "lm1b"))
    with pytest.raises(ValueError, match=match):
        check_entropy_tables(broken)
    for name, tensor in broken.items():
        torch.save(tensor, tmp_path / f"entropy_{name}.pt")
    with pytest.raises(ValueError, match=match):
        load_entropy_tables(tmp_path)
    state = EntropyRateEstimator().state_dict()
    with pytest.raises(ValueError, match=match):
        EntropyRateEstimator().load_state_dict({**state, "tables": broken})


def test_float32_rounding_of_the_official_cdf_is_accepted(entropy_tables_dir):
    """The estimator's float32 running sum can leave a CDF value one ulp above the final 1.0 before empty bins."""
    owt = load_entropy_tables(entropy_tables_dir / "owt")
    assert owt["pdf"][-1] == 0.0 and owt["cdf"][-2] == 1.0
    owt["cdf"][-2] = 1.0000001
    estimator = EntropyRateEstimator()
    estimator.load_state_dict({**estimator.state_dict(), "tables": owt})
    assert torch.equal(estimator.tables["cdf"], owt["cdf"])


def test_lognormal_prior_table_is_the_warm_up_distribution():
    prior = lognormal_prior_tables(128, -1.2, 1.2, 0.002, 80.0)
    check_entropy_tables(prior)
    mu, std = lognormal_fit(prior["pdf"], prior["sigmas"])
    assert mu == pytest.approx(-1.2, abs=0.02) and std == pytest.approx(1.2, abs=0.02)
    assert prior["edges"][0].item() == pytest.approx(0.002) and prior["edges"][-1].item() == pytest.approx(80.0)


def _gloo_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        estimator = EntropyRateEstimator(num_bins=4, min_per_bin=1, buffer_size=32, gather_fn=gather_across_ranks)
        for step in range(3):
            n = 3 + rank + step  # different counts per rank and step
            sigma = torch.full((n,), 0.1 * (rank + 1) + step)
            estimator.update(sigma, torch.full((n,), float(rank)))
        estimator.refresh()
        torch.save(estimator.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_real_two_process_gloo_gather(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    expected_sigma, expected_metric = [], []
    for step in range(3):
        for rank in range(2):
            n = 3 + rank + step
            expected_sigma.append(torch.full((n,), 0.1 * (rank + 1) + step))
            expected_metric.append(torch.full((n,), float(rank)))
    for state in states:
        assert torch.equal(state["sigma"], torch.cat(expected_sigma))
        assert torch.equal(state["metric"], torch.cat(expected_metric))
    assert all(torch.equal(states[0]["tables"][k], states[1]["tables"][k]) for k in states[0]["tables"])
