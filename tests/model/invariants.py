"""What must hold once everything is drained: the policy's answer on both sides, no row shared by two
sources, no write that changes nothing, and counts that add up.

The model of the answer (policy master_wins, master crm, deletes propagate both ways), per record, from
the values both sides agreed on at the start of a round (`base`) and what users left on each side at its
end (no change is applied while users edit, so "both sides changed it" is well defined):

- new on one side: that side's record; new on both: the master's.
- the master deleted it: gone everywhere, whatever the other side did (resurrecting it would override the
  master); the other side deleted it: gone, unless the master changed it in the same round (master wins;
  a master record deleted and restored unchanged may go either way: a poll may or may not have seen it gone).
- otherwise field by field: a field the master changed has the master's value, else the other side's if
  it changed it, else the agreed one. A record the master deleted and re-created may also stand whole.
Every comparison is between business values (a date-time as an instant at whole seconds, an amount in
cents), never between the forms the two systems hold them in.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.model.world import SYNCED, TO_ARCHIVE, TO_CRM, TO_ERP, World, business

KEYS = ("K0", "K1", "K2", "K3")
CODES = {"K0": "C0", "K1": "C1", "K2": "C2", "K3": "C0"}  # K0 and K3 map to one archive row

Values = dict[str, Any] | None


class InvariantBroken(AssertionError):
    """One named invariant failed; the name leads the message so failures group by invariant."""


ORDER = ("settles", "counts_add_up", "sides_agree", "policy_answer", "create_conflict", "delete_conflict",
         "one_source_per_row", "nothing_resurrected",
         "one_way_answer", "key_reuse", "no_noop_writes", "no_dead_letters")
# One exception class per invariant, so Hypothesis tells the failures apart and shrinks each on its own.
BROKEN = {name: type(f"Broken_{name}", (InvariantBroken,), {}) for name in ORDER}


def off() -> set[str]:
    """Invariants switched off for an exploratory run (DUALSYNC_MODEL_OFF=name,name); CI switches off none.
    `late_delete` lets a drain that dropped a delete be followed by more polls until one sends nothing."""
    return {name.strip() for name in os.environ.get("DUALSYNC_MODEL_OFF", "").split(",") if name.strip()}


def changed(row: dict[str, Any], base: dict[str, Any]) -> bool:
    return any(row[f] != base[f] for f in SYNCED)


def answers(base: Values, crm: Values, erp: Values, crm_recreated: bool) -> tuple[str, list[Values]]:
    """Every state the record may end in under the policy (usually one), and the name of the invariant
    that says so: `create_conflict` (created on both sides at once), `delete_conflict` (deleted on one
    side, changed on the other) or `policy_answer`."""
    if base is None:
        if crm is not None and erp is not None and crm != erp:
            return "create_conflict", [crm]
        return "policy_answer", [crm if crm is not None else erp]
    if crm is None:
        return ("delete_conflict" if erp is not None and changed(erp, base) else "policy_answer"), [None]
    if erp is None:
        if changed(crm, base):
            return "delete_conflict", [crm]
        # Deleted and restored unchanged in the master: if no poll saw the gap, nothing changed there.
        return ("delete_conflict", [crm, None]) if crm_recreated else ("policy_answer", [None])
    merged = dict(base)
    for f in SYNCED:
        merged[f] = crm[f] if crm[f] != base[f] else erp[f] if erp[f] != base[f] else base[f]
    return "policy_answer", [merged, crm] if crm_recreated and crm != merged else [merged]


@dataclass
class Round:
    """What a round must end in: per key, the acceptable answers and the invariant that names them."""

    expected: dict[str, list[Values]] = field(default_factory=dict)
    rule: dict[str, str] = field(default_factory=dict)
    master_changed: dict[str, set[str]] = field(default_factory=dict)  # fields the master changed this round
    crashed: bool = False

    def expect(self, key: str, verdict: tuple[str, list[Values]], base: Values, crm: Values) -> None:
        self.rule[key], self.expected[key] = verdict
        self.master_changed[key] = {f for f in SYNCED if crm is not None and (base is None or crm[f] != base[f])}

    def late_edit(self, key: str, name: str, value: Any) -> None:
        """The ERP's user changed a field while the pipeline ran. It is the newest change of that field, so it
        stands, unless the master changed the field too: then it depends on which was applied first (if the
        master's change had reached the ERP, the edit came after it and stands; if not, master wins)."""
        if name in self.master_changed[key]:
            self.expected[key] = self.expected[key] + [{**v, name: value} for v in self.expected[key] if v]
        else:
            self.expected[key] = [{**v, name: value} for v in self.expected[key] if v]


def check(world: World, round_: Round, contended: set[str], reused: frozenset[str] = frozenset()
          ) -> dict[str, Values]:
    """Drain, then check every invariant; returns the agreed values per key (the next round's base).

    `contended`: archive codes two records held at once (either may own the row, the other is dead-lettered).
    `reused`: codes two records held one after the other; what breaks there is reported as `key_reuse`."""
    skip = off()
    try:
        world.quiesce(until_quiet="late_delete" in skip)
    except AssertionError as exc:
        if "settles" not in skip:
            raise BROKEN["settles"](f"settles: {exc}") from None
    crm = {k: business(world.crm_row(k)) for k in KEYS}
    erp = {k: business(world.erp_row(k)) for k in KEYS}
    problems: dict[str, list[str]] = {}

    def fail(name: str, text: str) -> None:
        if name not in skip:
            problems.setdefault(name, []).append(text)

    for key in KEYS:
        if crm[key] != erp[key]:
            rule = round_.rule.get(key, "policy_answer")
            fail("sides_agree" if rule == "policy_answer" else rule,
                 f"{key}: crm {_show(crm[key])} but erp {_show(erp[key])}")
        elif crm[key] not in round_.expected[key]:
            fail(round_.rule.get(key, "policy_answer"), f"{key}: both hold {_show(crm[key])}, the policy says "
                                  f"{' or '.join(_show(v) for v in round_.expected[key])}")
    _check_archive(world, crm, contended, _reuse(reused, fail))
    noops = world.engine_noop_writes()
    if round_.crashed:  # a one-way flow redoes a write a crash cut short: bounded, not a bug
        noops = [n for n in noops if not n.startswith("erp archive")]
    if noops:
        fail("no_noop_writes", f"{len(noops)} writes changed nothing: {noops[:4]}")
    _check_counts(world, contended, _reuse(reused, fail))
    if problems:
        first = min(problems, key=ORDER.index)
        named = sorted(problems.items(), key=lambda p: ORDER.index(p[0]))
        raise BROKEN[first]("; ".join(f"{name}: {' | '.join(texts)}" for name, texts in named))
    return crm


def _check_archive(world: World, crm: dict[str, Values], contended: set[str], fail: Any) -> None:
    rows = world.erp_rows("archive")
    links = world.app.state.lookup_keys(TO_ARCHIVE, "crm", KEYS)
    by_target: dict[str, list[str]] = {}
    for source_key, target_key in links.items():
        by_target.setdefault(target_key, []).append(source_key)
    for target_key, sources in by_target.items():
        if len(sources) > 1:
            fail("one_source_per_row", f"archive row {target_key} is linked to {sorted(sources)}")
    for code, row in rows.items():
        account = row["account"]
        source = crm.get(account)
        if source is None:
            fail("nothing_resurrected", f"archive row {code} belongs to {account}, which crm no longer has")
        elif business(row) != source or CODES[account] != code:
            fail("one_way_answer", f"archive row {code}: {_show(business(row))} but {account} is {_show(source)}")
    for key, values in crm.items():
        code = CODES[key]
        if values is None or code in contended:
            continue
        row = rows.get(code)
        if row is None or row["account"] != key:
            fail("one_way_answer", f"archive has no row {code} for {key}")


def _check_counts(world: World, contended: set[str], fail: Any) -> None:
    counts = world.bus.counts(world.app.queue)
    if counts.active or counts.scheduled:
        fail("counts_add_up", f"{counts.active} active and {counts.scheduled} scheduled left after draining")
    if world.sent != world.completed + counts.dead_letter:
        fail("counts_add_up", f"{world.sent} messages sent, {world.completed} completed + "
                              f"{counts.dead_letter} dead-lettered")
    settled = sum(world.outcomes.values())
    if settled != world.completed + world.dead_lettered:
        fail("counts_add_up", f"{settled} outcomes for {world.completed} completions and "
                              f"{world.dead_lettered} dead letters")
    unknown = [k for k in world.outcomes if k.split(":")[0] not in ("applied", "skipped", "retry", "dead_letter")]
    if unknown:
        fail("counts_add_up", f"outcomes of unexpected kinds: {unknown}")
    for letter in world.bus.peek_dead_letters(world.app.queue, 100):
        flow = letter.envelope.subject
        key = str(letter.envelope.application_properties.get("key"))
        if flow in (TO_ERP, TO_CRM) or CODES.get(key) not in contended:
            fail("no_dead_letters", f"{flow} {key}: {letter.dead_letter_reason}: {letter.dead_letter_description}")


def _reuse(reused: frozenset[str], fail: Any) -> Any:
    """Report a failure about a reused archive code under `key_reuse`."""

    def report(name: str, text: str) -> None:
        codes = set(re.findall(r"\bC\d\b", text)) | {CODES.get(k) for k in re.findall(r"\bK\d\b", text)}
        fail("key_reuse" if "archive" in text and codes & reused else name, text)

    return report


def contended_codes(present: Iterable[str]) -> set[str]:
    """Codes held by two present records at once."""
    seen: dict[str, int] = {}
    for key in present:
        seen[CODES[key]] = seen.get(CODES[key], 0) + 1
    return {code for code, n in seen.items() if n > 1}


def _show(values: Values) -> str:
    if values is None:
        return "(absent)"
    due = values["due"].strftime("%Y-%m-%d %H:%M:%S") if values.get("due") else None
    return f"{{name={values['name']}, amount={values['amount']}c, due={due}}}"


