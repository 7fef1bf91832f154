"""SentenceKV's view of a prompt for training (``reasoner.sentence_view``) and the sentence loss
(``reasoner.sentence_loss``), on CPU: which prompt line each trace line copies, what each zoom hands back, the mask
that follows, and that the loss scores sentences exactly as the server's ``SentenceIndex`` does."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reasoner import data, sentence_view, tasks
from reasoner.sentence_loss import mean_keys, sentence_loss, targets
from reasoner.sentence_view import SentenceSettings
from reasoner.zoom_loss import group_scores

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "zoomr-reasoner"


@pytest.fixture(scope="module")
def tok():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(MODEL / "tokenizer.json"))


@pytest.fixture(scope="module")
def ends(tok):
    from zoomr_sgl.sentences import SentenceEnds

    return SentenceEnds.from_tokenizer(tok)


def test_each_trace_line_names_the_prompt_lines_it_copies_from():
    for p in tasks.generate("heldout", 30, records_share=0.3):
        prompt, reads = p.prompt.split("\n"), tasks.line_reads(p)
        trace = p.trace.split("\n")
        assert len(reads) == len(trace)
        item = None
        for line, read in zip(trace, reads):
            hop = re.match(r"step \d+: box (\w+) ", line)
            end = re.match(r"end (\w+) ", line)
            start = re.match(r"item (\w+): start ", line)
            summary = re.match(r"<summary>item (\w+) ", line)
            record = re.match(r"Record (\w+ \d+) has code", line)
            if hop:  # the box's line, and the item's own (its step count says when to stop)
                assert prompt[read[0]].startswith(f"box {hop.group(1)} ") and read[-1] == item
                assert len(read) == 2 or prompt[item].startswith(f"box {hop.group(1)} ")
            elif end:
                assert read == (item,) and prompt[item].startswith(f"item {end.group(1)}: ")
            elif start:  # the line before its own (the item traced last, or the list's header), and its own
                item = read[1]
                assert len(read) == 2 and read[0] == read[1] - 1
                assert prompt[read[1]].startswith(f"item {start.group(1)}: ")
                assert prompt[read[0]].startswith("item ") or prompt[read[0]] == "Items:"
            elif summary:
                assert len(read) == 1 and prompt[read[0]].startswith(f"item {summary.group(1)}: ")
            elif record:
                assert len(read) == 1 and prompt[read[0]].startswith(f"record {record.group(1)} has ")
                assert prompt[read[0]].endswith(line.split("code ")[1])  # the code it copies
            else:
                assert read == (), line


def test_linked_items_name_the_next_one_and_change_nothing_else():
    for i in range(20):
        plain, linked = tasks.problem("heldout", "chain", i), tasks.problem("heldout", "chain", i, linked=True)
        assert (plain.trace, plain.answer, plain.target_thought) == (linked.trace, linked.answer, linked.target_thought)
        items = [line for line in linked.prompt.split("\n") if line.startswith("item ")]
        names = [line.split()[1].rstrip(":") for line in items]
        assert [line.rstrip(".").split("next ")[1] for line in items] == names[1:] + ["none"]
        assert [re.sub(r", next \w+", "", line) for line in linked.prompt.split("\n")] == plain.prompt.split("\n")


def _example(tok, ends, family, s=SentenceSettings(), **size):
    p = tasks.problem("heldout", family, 5, **size)
    return p, data.encode(tok, p, zoomr_aware=True, sentences=s, ends=ends)


def test_a_hop_needs_the_sentence_that_holds_its_box_line(tok, ends):
    p, e = _example(tok, ends, "chain", items=4)
    v, spans = e.sent, sentence_view.leavable(e.ids[: e.prompt_len], ends, SentenceSettings())
    assert len(v.psent) == len(v.need) == len(e.ids)
    hops = pairs = 0
    for q in range(e.prompt_len, len(e.ids) - 1):
        text = tok.decode(e.ids[: q + 2])
        line = text.split("\n")[-1]
        m = re.match(r"step \d+: box (\w+) (\w+)$", line)  # the token at q + 1 is a hop's value
        if m:
            hops += 1
            texts = [tok.decode(e.ids[spans[k].start:spans[k].end]) for k in v.need[q]]
            assert f"box {m.group(1)} {m.group(2)}." in texts[0]
            assert all("item " in t for t in texts[1:])  # the item's own line, unless it sits in the recent window
        m = re.match(r"item (\w+)$", line)  # the token at q + 1 names the next item: its line and the one before
        if m and "</summary>" in text[len(tok.decode(e.ids[: e.prompt_len])):]:  # not the first item's
            texts = [tok.decode(e.ids[spans[k].start:spans[k].end]) for k in v.need[q]]
            assert all("item " in t for t in texts)  # lines in the recent window are left out
            if len(texts) == 2:
                pairs += 1
                assert f"item {m.group(1)}: start" in texts[1] and f"item {m.group(1)}: start" not in texts[0]
    assert hops >= 16 and pairs >= 1
    assert all(k == () for k in v.need[: e.prompt_len - 1])  # the prompt's own queries need nothing


def test_each_zoom_hands_back_what_its_queries_need_within_the_budget(tok, ends):
    s = SentenceSettings(budget=48, interval=4)
    for family, size in (("chain", {"items": 6}), ("records", {"prompt_chars": 3000})):
        p, e = _example(tok, ends, family, s, **size)
        v, spans = e.sent, sentence_view.leavable(e.ids[: e.prompt_len], ends, s)
        assert all(z == -1 for z in v.zpick[: e.prompt_len + 1])  # prefill and the first decode step read it all
        assert set(v.zpick[e.prompt_len + 1:]) == set(range(len(v.picks)))
        for z, pick in enumerate(v.picks):
            assert sum(spans[k].tokens for k in pick) <= s.budget
            readers = [q for q, j in enumerate(v.zpick) if j == z]
            wanted = {k for q in readers for k in v.need[q]}
            assert wanted <= set(pick), (family, z)
        assert any(len(set(v.zpick[q] for q in range(a, a + s.interval))) == 1
                   for a in range(e.prompt_len + 1, len(e.ids) - s.interval))  # zooms every interval
        for x in spans:  # leavable: outside the sink and the recent window
            assert x.start >= s.sink and x.end <= e.prompt_len - s.recent
        sents = {k for k in v.psent if k >= 0}
        assert sents == set(range(len(spans)))


def test_the_mask_keeps_a_query_to_the_sentences_its_zoom_handed_back(tok, ends):
    p, e = _example(tok, ends, "chain", items=4)
    (seg, own, stray, sb), = [view for _, _, view in [next(iter(data.Batches([e], 100_000, 0, 1)))]]
    mask = data.attention_mask(seg, own, stray, sb)[0, 0]
    plain = data.attention_mask(seg, own, stray)[0, 0]
    v = e.sent
    n = e.prompt_len
    assert torch.equal(mask[: n + 1], plain[: n + 1])  # the prompt and the first decode step: the whole prompt
    for q in (n + 1, n + 7, len(e.ids) - 1):
        pick = set(v.picks[v.zpick[q]])
        for k in range(n):
            expected = v.psent[k] < 0 or v.psent[k] in pick
            assert bool(mask[q, k]) == (expected and bool(plain[q, k])), (q, k)
    assert torch.equal(mask[:, n:], plain[:, n:])  # the trace's own keys are ZoomR's view, untouched


def test_the_sentence_loss_scores_sentences_as_the_server_index_does(tok, ends):
    from zoomr_sgl.sentence_index import build
    from zoomr_sgl.sentences import Sentence

    p, e = _example(tok, ends, "chain", items=3)
    _, _, (seg, own, stray, sb) = next(iter(data.Batches([e], 100_000, 0, 1)))
    gen = torch.Generator().manual_seed(3)
    S = len(e.ids)
    qs = [torch.randn(1, 4, S, 8, generator=gen, requires_grad=True) for _ in range(2)]
    ks = [torch.randn(1, 2, S, 8, generator=gen, requires_grad=True) for _ in range(2)]
    spans = sentence_view.leavable(e.ids[: e.prompt_len], ends, SentenceSettings())
    count = len(spans)
    means = mean_keys(ks, 0, sb.psent[0], count)
    index = build([k[0].transpose(0, 1).detach() for k in ks], torch.arange(S),
                  [Sentence(x.start, x.end, True) for x in spans])
    q = len(e.ids) - 5
    mine = group_scores([x[0][:, [q]] for x in qs], means, torch.arange(count), count)[0]
    theirs = index.scores(torch.stack([x[0, :, q] for x in qs]).detach())
    torch.testing.assert_close(mine.detach(), theirs, rtol=1e-4, atol=1e-5)
    got = sentence_loss(qs, ks, sb, SentenceSettings().interval)
    assert got.rows == 1 and float(got.loss.detach()) > 0
    got.loss.backward()
    assert qs[0].grad[0, :, e.prompt_len:].abs().sum() > 0 and ks[0].grad[0, :, spans[0].start].abs().sum() > 0
    assert qs[0].grad[0, :, : e.prompt_len - 1].abs().sum() == 0  # the prompt's queries pick nothing


def test_targets_look_one_interval_and_one_step_ahead():
    need = torch.tensor([[-1, -1], [-1, -1], [3, -1], [3, 4], [-1, -1], [5, -1], [-1, -1], [-1, -1]], dtype=torch.int16)
    t = targets(need, 2)
    assert t.shape == (8, 6)
    assert sorted(t[0].tolist()) == [-1, -1, -1, 3, 3, 4] and sorted(t[2].tolist()) == [-1, -1, -1, 3, 4, 5]
    assert set(t[5].tolist()) == {-1} and set(t[7].tolist()) == {-1}


def test_the_sentence_loss_can_be_learnt(tok, ends):
    """A few steps on the sentence loss alone make the needed sentence score first (learnt keys and queries)."""
    p, e = _example(tok, ends, "chain", items=2)
    _, _, (seg, own, stray, sb) = next(iter(data.Batches([e], 100_000, 0, 1)))
    gen = torch.Generator().manual_seed(5)
    S = len(e.ids)
    qs = [torch.randn(1, 2, S, 16, generator=gen).requires_grad_()]
    ks = [torch.randn(1, 1, S, 16, generator=gen).requires_grad_()]
    opt = torch.optim.Adam(qs + ks, lr=0.05)
    first = None
    for _ in range(60):
        loss = sentence_loss(qs, ks, sb, 4).loss
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first / 4


def test_training_under_the_sentence_view_writes_a_checkpoint(tmp_path):
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "reasoner.train", "--out", str(out), "--steps", "2",
                        "--train-problems", "8", "--eval", "0", "--tokens-per-step", "4096", "--layers", "1",
                        "--hidden", "32", "--heads", "2", "--kv-heads", "1", "--intermediate", "64", "--workers", "1",
                        "--device", "cpu", "--zoomr-aware", "--sentence-view", "--sentence-loss-weight", "1",
                        "--items", "3", "--records-share", "0", "--sentence-budget", "32", "--warm", "0"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((out / "reasoner_manifest.json").read_text())
    assert manifest["settings"]["sentence_view"] and manifest["settings"]["sentence_budget"] == 32
    assert any("sentence_loss" in point for point in manifest["loss_curve"])
    for flags, says in ((["--sentence-view"], "needs --zoomr-aware"),
                        (["--zoomr-aware", "--sentence-loss-weight", "1"], "needs --sentence-view"),
                        (["--zoomr-aware", "--sentence-view", "--sentence-budget", "0"], "must be positive")):
        bad = subprocess.run([sys.executable, "-m", "reasoner.train", "--out", str(out), *flags], cwd=REPO,
                             capture_output=True, text=True)
        assert bad.returncode == 2 and says in bad.stderr and bad.stderr.count("\n") == 1, bad.stderr


def test_the_view_probe_reports_the_sentence_view_and_what_the_zoom_picks():
    r = subprocess.run([sys.executable, "-m", "reasoner.view_probe", "--n", "1", "--items", "3", "--keep", "0",
                        "--sentences", "--linked", "--sentence-budget", "32"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = next(line for line in r.stdout.splitlines() if line.startswith("| keep 0 + sentences |"))
    assert row.count("% of") == 4
    served = re.search(r"picked its sentences for ([\d.]+)% of (\d+) start values, ([\d.]+)% of (\d+) hop values",
                       r.stdout)
    assert served and int(served.group(2)) >= 2 and int(served.group(4)) >= 8
    bad = subprocess.run([sys.executable, "-m", "reasoner.view_probe", "--sentence-budget", "0"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--sentence-budget must be positive" in bad.stderr
