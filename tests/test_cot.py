"""``sim4seg data cot`` (assistant -> rule gate -> critic loop, resumable) and ``sim4seg data review``; the hf
backend is tested in ``test_cot_hf.py``."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from sim4seg.cli import main
from sim4seg.data.cot import ChatRequest, export_review, generate_cots, import_review
from sim4seg.data.cot.gate import check_cot, clean_cot, parse_verdict
from sim4seg.data.cot.openai_backend import OpenAIBackend
from sim4seg.data.cot.store import CotState
from sim4seg.data.schema import iter_records
from sim4seg.data.synthetic import SYNTH_SUBSETS, cot_for, write_synthetic
from sim4seg.errors import UserError


def _dataset(root: Path, n: int) -> dict[str, dict]:
    """A synthetic dataset with every ``cot`` blanked and a unique query per record; returns id -> record dict."""
    write_synthetic(root, n, seed=0, progress=False)
    path = root / "records.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for r in recs:
        r["cot"] = None
        r["query"] += f" Case {r['id']}."
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return {r["id"]: r for r in recs}


def _good(rec: dict) -> str:
    return cot_for(SYNTH_SUBSETS[rec["subset"]], rec["diagnosis"][0])


def _wrong(rec: dict) -> str:
    sub = SYNTH_SUBSETS[rec["subset"]]
    return cot_for(sub, next(x for x in sub.labels if x != rec["diagnosis"][0]))


def _cots(root: Path) -> dict[str, str | None]:
    return {r.id: r.cot for _, r in iter_records(root) if not isinstance(r, Exception)}


class Scripted:
    """A test backend: ``reply(request)`` per request; raises after ``fail_after`` calls when set."""

    def __init__(self, reply, fail_after: int | None = None) -> None:
        self.reply, self.fail_after, self.calls = reply, fail_after, []

    def generate(self, batch: list[ChatRequest]) -> list[str]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("simulated crash")
        self.calls.append(batch)
        return [self.reply(r) for r in batch]

    @property
    def ids(self) -> list[str]:
        return [r.record_id for b in self.calls for r in b]


# ----------------------------------------------------------------------------------------------------------
# Gate and verdict parsing
# ----------------------------------------------------------------------------------------------------------


def test_gate_verdicts_and_cleaning() -> None:
    sub = SYNTH_SUBSETS["SynthUS"]
    good = cot_for(sub, "benign")
    assert check_cot(good, ["benign"], sub) is None
    assert "states malignant" in check_cot(cot_for(sub, "malignant"), ["benign"], sub)
    assert "lacks the image-analysis" in check_cot("Firstly, it is ultrasound imaging. Finally, the diagnosis is "
                                                   "benign.", ["benign"], sub)
    assert "reserved token" in check_cot(good + " [SEG]", ["benign"], sub)
    assert "no diagnosis" in check_cot(good.replace("is benign", "is unclear"), ["benign"], sub)
    assert clean_cot(f"Sure! Here it is:\n\n**Firstly**, {good[9:]}\n") == good

    assert parse_verdict("ACCEPT") == (True, "")
    assert parse_verdict("**REJECT**: analysis too vague") == (False, "analysis too vague")
    assert parse_verdict("Verdict: reject\nReason: wrong modality") == (False, "wrong modality")
    assert parse_verdict("Accepted. Well argued.") == (True, "Well argued.")
    assert parse_verdict("REJECT") == (False, "no reason given")
    for junk in ("", "I think it is fine", "ACCEPTABLE overall"):
        ok, reason = parse_verdict(junk)
        assert not ok and reason.startswith("unparseable verdict")


# ----------------------------------------------------------------------------------------------------------
# (a) an OpenAI-compatible server (http.server in a thread)
# ----------------------------------------------------------------------------------------------------------


class ChatServer:
    """Speaks /v1/chat/completions. Model "asst": per record, first a CoT with the wrong diagnosis, then the right
    one. Model "critic": per record, "REJECT: analysis too vague" once, then "ACCEPT". Records every request."""

    def __init__(self, records: dict[str, dict]) -> None:
        self.records, self.requests, self.counts = records, [], {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # /v1/models
                out = json.dumps({"data": [{"id": "asst"}, {"id": "critic"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                text = next(c["text"] for c in body["messages"][0]["content"] if c["type"] == "text")
                rec = next(r for r in server.records.values() if r["query"] in text)
                key = (body["model"], rec["id"])
                n = server.counts[key] = server.counts.get(key, 0) + 1
                if body["model"] == "asst":
                    reply = _wrong(rec) if n == 1 else f"Here is my answer.\n{_good(rec)}"
                else:
                    reply = "REJECT: analysis too vague" if n == 1 else "ACCEPT\nThe reasoning is sound."
                out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _asst_texts(server: ChatServer, rec: dict) -> list[str]:
    out = []
    for r in server.requests:
        text = next(c["text"] for c in r["body"]["messages"][0]["content"] if c["type"] == "text")
        if r["body"]["model"] == "asst" and rec["query"] in text:
            out.append(text)
    return out


def test_openai_backend_feedback_loop(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    data = tmp_path / "ds"
    recs = _dataset(data, 3)
    with ChatServer(recs) as server:
        rc = main(["data", "cot", "--data", str(data), "--assistant", f"openai:{server.url}#asst",
                   "--critic", f"openai:{server.url}#critic", "--max-rounds", "3", "--batch-size", "2"])
        with pytest.raises(UserError, match="serves 2 models"):  # no #model-name: ask /models, refuse 2
            OpenAIBackend(server.url).generate([ChatRequest("hi")])
    assert rc == 0
    assert "cot: 3 accepted, 0 need review, 0 failed" in capsys.readouterr().out
    state = CotState(data).entries
    cots = _cots(data)
    for rid, rec in recs.items():
        entry = state[rid]
        assert entry["status"] == "accepted" and entry["rounds"] == 3
        assert [(a["by"], a["verdict"]) for a in entry["attempts"]] == [
            ("gate", "REJECT"), ("critic", "REJECT"), ("critic", "ACCEPT")]
        assert entry["attempts"][1]["reason"] == "analysis too vague"
        assert cots[rid] == _good(rec)  # chatter before "Firstly" removed
        texts = _asst_texts(server, rec)
        assert len(texts) == 3
        assert "A reviewer rejected" not in texts[0] and f"The confirmed diagnosis is: {rec['diagnosis'][0]}" in texts[0]
        assert "A reviewer rejected your previous answer because: the final sentence states" in texts[1]
        assert _wrong(rec) in texts[1]  # the previous attempt is quoted
        assert "A reviewer rejected your previous answer because: analysis too vague" in texts[2]
    # the image arrives as a base64 PNG data URL; the key only as a header
    first = server.requests[0]
    url = next(c for c in first["body"]["messages"][0]["content"] if c["type"] == "image_url")["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    png = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    shapes = {cv2.imread(str(data / r["image"])).shape for r in recs.values()}
    assert png.shape in shapes
    assert {r["auth"] for r in server.requests} == {"Bearer sk-test-secret-123"}
    assert len(server.requests) == 3 * 3 + 3 * 2
    for name in ("records.jsonl", "cot_state.jsonl"):
        assert "sk-test-secret" not in (data / name).read_text()


def test_openai_unreachable_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    data = tmp_path / "ds"
    _dataset(data, 1)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = f"openai:http://127.0.0.1:{port}/v1#m"
    rc = main(["data", "cot", "--data", str(data), "--assistant", spec, "--critic", spec, "--max-rounds", "1",
               "--timeout", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    errors = [ln for ln in re.split(r"[\r\n]", err) if ln.startswith("error:")]
    assert len(errors) == 1 and f"cannot reach http://127.0.0.1:{port}/v1/chat/completions" in errors[0]


# ----------------------------------------------------------------------------------------------------------
# (b) resume after a crash
# ----------------------------------------------------------------------------------------------------------


def test_resume_after_crash_skips_accepted(tmp_path: Path) -> None:
    data = tmp_path / "ds"
    recs = _dataset(data, 5)
    with open(data / "records.jsonl", "a") as f:
        f.write("{not json\n")  # a damaged line must survive every rewrite
    good = Scripted(lambda r: _good(recs[r.record_id]), fail_after=1)
    critic = Scripted(lambda r: "ACCEPT: fine")
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_cots(data, good, critic, max_rounds=2, batch_size=2, progress=False)
    first = good.ids
    assert len(first) == 2
    cots = _cots(data)
    assert {k for k, v in cots.items() if v} == set(first)
    assert "{not json" in (data / "records.jsonl").read_text()
    assert {e["status"] for e in CotState(data).entries.values()} == {"accepted"}

    again = Scripted(lambda r: _good(recs[r.record_id]))
    s = generate_cots(data, again, critic, max_rounds=2, batch_size=2, limit=2, progress=False)
    assert (s.accepted, s.skipped, s.failed) == (2, 2, 1)  # the damaged line counts as failed
    assert not set(again.ids) & set(first)
    s = generate_cots(data, again, critic, max_rounds=2, batch_size=2, progress=False)
    assert (s.accepted, s.skipped) == (1, 4)
    assert len(again.ids) == len(set(again.ids)) == 3
    nothing = Scripted(lambda r: pytest.fail("no request expected"))
    s = generate_cots(data, nothing, nothing, max_rounds=2, progress=False)
    assert (s.accepted, s.skipped) == (0, 5)
    cots = _cots(data)
    assert all(cots[rid] == _good(rec) for rid, rec in recs.items())
    lines = (data / "records.jsonl").read_text().splitlines()
    assert len(lines) == 6 and lines[-1] == "{not json"
    assert json.loads(lines[0])["source"]["generator"] == "sim4seg.data.synthetic"


# ----------------------------------------------------------------------------------------------------------
# (c) human review
# ----------------------------------------------------------------------------------------------------------


def test_review_export_and_import(tmp_path: Path, capsys) -> None:
    data, out = tmp_path / "ds", tmp_path / "review"
    recs = _dataset(data, 4)
    asst = Scripted(lambda r: _good(recs[r.record_id]))
    critic = Scripted(lambda r: "REJECT: too vague <really>")
    s = generate_cots(data, asst, critic, max_rounds=2, progress=False)
    assert s.needs_review == 4
    ids = list(recs)

    assert main(["data", "review", "export", "--data", str(data), "--out", str(out), "--batch-size", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["batch_001.csv", "batch_001.html", "batch_002.csv",
                                                     "batch_002.html"]
    page = (out / "batch_001.html").read_text()
    for rid in ids[:3]:
        assert html.escape(_good(recs[rid])) in page and html.escape(recs[rid]["query"]) in page
    assert "too vague &lt;really&gt;" in page
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(imgs) == 3
    img = cv2.imdecode(np.frombuffer(base64.b64decode(imgs[0]), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == cv2.imread(str(data / recs[ids[0]]["image"])).shape
    with open(out / "batch_001.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["id", "decision", "edited_cot", "comment"]] + [[rid, "", "", ""] for rid in ids[:3]]

    sub = SYNTH_SUBSETS[recs[ids[1]]["subset"]]
    edited = (f"Firstly, the modality of this image is {sub.modality}. Secondly, the image analysis shows a clearly "
              f"visible lesion. Finally, the diagnosis is {recs[ids[1]]['diagnosis'][0]}.")
    filled = out / "filled.csv"
    with open(filled, "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["id", "decision", "edited_cot", "comment"],
                     [ids[0], "accept", "", "ok"],
                     [ids[1], "edit", edited, "reworded"],
                     [ids[2], "edit", _wrong(recs[ids[2]]), ""],  # line 4: fails the gate
                     [ids[3], "Reject", "", "wrong side"],
                     ["nope/1", "accept", "", ""],  # line 6: unknown id
                     [ids[0], "maybe", "", ""]])  # line 7: bad decision
    capsys.readouterr()
    assert main(["data", "review", "import", "--data", str(data), "--csv", str(filled)]) == 1
    captured = capsys.readouterr()
    problems = captured.err.strip().splitlines()
    assert len(problems) == 3
    assert problems[0].startswith(f"{filled}:4:") and "fails the rule gate" in problems[0]
    assert problems[1].startswith(f"{filled}:6:") and "unknown id 'nope/1'" in problems[1]
    assert problems[2].startswith(f"{filled}:7:") and "'maybe'" in problems[2]
    assert "1 accepted, 1 edited, 1 rejected, 0 undecided, 3 bad row(s)" in captured.out

    cots, state = _cots(data), CotState(data).entries
    assert cots[ids[0]] == _good(recs[ids[0]]) and state[ids[0]]["status"] == "accepted"
    assert cots[ids[1]] == edited and state[ids[1]]["human"][-1]["decision"] == "edit"
    assert cots[ids[2]] is None and state[ids[2]]["status"] == "needs_review"
    assert cots[ids[3]] is None and state[ids[3]]["status"] == "rejected"

    # a later cot run retries the human-rejected record, not the one still awaiting review
    again = Scripted(lambda r: _good(recs[r.record_id]))
    s = generate_cots(data, again, Scripted(lambda r: "ACCEPT"), max_rounds=1, progress=False)
    assert again.ids == [ids[3]] and (s.accepted, s.skipped, s.awaiting_review) == (1, 2, 1)
    csvs = export_review(data, tmp_path / "all", status="all")
    with open(csvs[0], newline="") as f:
        assert len(list(csv.reader(f))) == 1 + 4
    assert import_review(data, [csvs[0]]).undecided == 4


def test_damaged_files_are_one_line_errors(tmp_path: Path, capsys) -> None:
    data = tmp_path / "ds"
    _dataset(data, 2)
    args = ["data", "cot", "--data", str(data), "--assistant", "openai:http://127.0.0.1:9/v1#m", "--critic",
            "openai:http://127.0.0.1:9/v1#m", "--max-rounds", "1"]
    (data / "cot_state.jsonl").write_text('{"id": "x", "status": "accepted"}\n{"status": "failed"}\n')
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {data / 'cot_state.jsonl'}: entry 2 is not an object with an id; the file is damaged: " \
                  "remove the entry or the file (the records' CoTs are in records.jsonl)"
    (data / "cot_state.jsonl").unlink()
    with open(data / "records.jsonl", "ab") as f:
        f.write(b'{"id": "bad \xff"}\n')
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {data / 'records.jsonl'}:3: not UTF-8 text") and "\n" not in err


def test_negatives_get_a_normal_cot(tmp_path: Path) -> None:
    """Negatives (mask null, diagnosis ["normal"]) are filled like the others, their CoT ending in "normal" even in
    subsets without a "normal" label, and the review page shows them without a mask."""
    data = tmp_path / "ds"
    write_synthetic(data, 8, seed=0, progress=False, negatives=0.5)
    path = data / "records.jsonl"
    recs = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    for r in recs.values():
        r["cot"] = None
    path.write_text("".join(json.dumps(r) + "\n" for r in recs.values()))
    negatives = [rid for rid, r in recs.items() if r["mask"] is None]
    assert negatives and any("normal" not in SYNTH_SUBSETS[recs[rid]["subset"]].labels for rid in negatives)

    def reply(r: ChatRequest) -> str:
        rec = recs[r.record_id]
        return cot_for(SYNTH_SUBSETS[rec["subset"]], [] if rec["mask"] is None else rec["diagnosis"])

    asst = Scripted(reply)
    s = generate_cots(data, asst, Scripted(lambda r: "ACCEPT"), max_rounds=1, progress=False)
    assert (s.accepted, s.failed) == (8, 0)
    assert all(_cots(data)[rid].endswith("the diagnosis is normal.") for rid in negatives)
    sub = SYNTH_SUBSETS[recs[negatives[0]]["subset"]]
    assert "states normal" in check_cot(cot_for(sub, []), [sub.labels[0]], sub)  # normal is wrong for a positive
    page = export_review(data, tmp_path / "review", status="all")[0].with_suffix(".html").read_text()
    assert page.count("negative: no finding, no mask") == len(negatives) and 'class="err"' not in page
