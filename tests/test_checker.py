"""
The chaos checker on hand-made histories: each rule, where it must fire and
where it must not.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from appliance.testing.checker import TIMEOUT, Fault, Items, Op, check, encode_items, item_name


def items(client, *seqs, other=()):
    return Items.of(client, [item_name(client, s) for s in seqs] + list(other))


def add(seq, start, end, cart=None, outcome=200, client=0):
    """
    An add of item C{seq}; by default its answer lists items 1..seq.
    """
    if cart is None and outcome == 200:
        cart = range(1, seq + 1)
    return Op(client, "add", start, end, outcome, seq, items(client, *cart) if cart is not None else None)


def read(start, end, cart, outcome=200, client=0):
    return Op(client, "read", start, end, outcome, None, items(client, *cart) if cart is not None else None)


class EncodingTests(SynchronousTestCase):
    def test_runs_round_trip(self):
        """A cart of own items becomes runs of sequence numbers and decodes to the same set."""
        cart = [item_name(3, s) for s in (1, 2, 3, 7, 8, 5)]
        encoded = encode_items(3, cart)
        self.assertEqual(encoded, {"runs": [[1, 3], [7, 8], [5, 5]], "other": []})
        self.assertEqual(Items.decode(encoded), Items(frozenset({1, 2, 3, 5, 7, 8})))

    def test_history_record_round_trip(self):
        """A workload record becomes an Op with its items decoded and the servers its cookie named."""
        op = Op.from_record({"client": 2, "kind": "add", "seq": 3, "start": 1.0, "end": 1.5, "outcome": 200,
                             "items": encode_items(2, ["c2-1", "c2-3"]), "route": "s1!s3"})  # fmt: skip
        self.assertTrue(op.acked)
        self.assertEqual((op.items.own, op.route_servers), (frozenset({1, 3}), frozenset({"s1", "s3"})))

    def test_foreign_items_and_duplicates_are_kept(self):
        """Another client's items and odd values stay verbatim; an item twice is counted as a duplicate."""
        decoded = Items.of(1, ["c1-1", "c2-1", "c1-1", "apple", 7])
        self.assertEqual(decoded.own, frozenset({1}))
        self.assertEqual(decoded.other, ("c2-1", "apple", "7"))
        self.assertEqual(decoded.dupes, 1)


class LossTests(SynchronousTestCase):
    def test_acknowledged_and_present_is_not_lost(self):
        """Acknowledged adds found in the final read: nothing lost, the run is safe."""
        report = check([add(1, 0, 1), add(2, 2, 3)], {0: items(0, 1, 2)})
        self.assertEqual((report.acked, report.lost_count), (2, 0))
        self.assertTrue(report.safe)

    def test_acknowledged_and_missing_is_lost(self):
        """An acknowledged add missing at the end is lost and the run is not safe."""
        report = check([add(1, 0, 1), add(2, 2, 3)], {0: items(0, 1)})
        self.assertEqual(report.lost, {0: [2]})
        self.assertFalse(report.safe)

    def test_ok_answer_without_the_item_is_no_acknowledgement(self):
        """A 200 whose list lacks the item added is not an acknowledgement, so its absence is no loss."""
        report = check([add(1, 0, 1, cart=[])], {0: items(0)})
        self.assertEqual((report.acked, report.lost_count, report.bad_acks), (0, 0, 1))

    def test_failed_add_present_at_the_end_is_allowed(self):
        """Items whose add timed out or failed may appear: counted by outcome, not lost, still safe."""
        history = [add(1, 0, 1), add(2, 2, 7, outcome=TIMEOUT), add(3, 8, 9, outcome=503), add(4, 10, 11, cart=[1, 2, 4])]
        report = check(history, {0: items(0, 1, 2, 4)})
        self.assertEqual(dict(report.unacked), {TIMEOUT: 1})
        self.assertEqual(report.lost_count, 0)
        self.assertTrue(report.safe)

    def test_unread_cart_is_not_safe(self):
        """A cart that could not be read back proves nothing: reported and not safe."""
        report = check([add(1, 0, 1)], {0: None})
        self.assertEqual(report.unread, [0])
        self.assertFalse(report.safe)


class PhantomTests(SynchronousTestCase):
    def test_item_never_sent_is_a_phantom(self):
        """An own item number never sent, or another client's item, in a cart is a phantom."""
        report = check([add(1, 0, 1)], {0: items(0, 1, 9, other=["c1-1"])})
        self.assertEqual(sorted(report.phantoms), [(0, "c0-9"), (0, "c1-1")])
        self.assertFalse(report.safe)

    def test_phantom_in_a_read_counts_once(self):
        """A read showing an item never sent is a phantom even if the end no longer has it; once per item."""
        report = check([add(1, 0, 1), read(2, 3, [1, 5]), read(4, 5, [1, 5])], {0: items(0, 1)})
        self.assertEqual(report.phantoms, [(0, "c0-5")])

    def test_sent_items_are_no_phantoms(self):
        """Every item present was sent by this client: no phantom."""
        report = check([add(1, 0, 1), add(2, 2, 3, outcome=TIMEOUT)], {0: items(0, 1, 2)})
        self.assertEqual(report.phantoms, [])


class StaleTests(SynchronousTestCase):
    def test_read_after_acknowledgement_lacking_it_is_stale(self):
        """A read that starts after an add was acknowledged and lacks the item is stale."""
        report = check([add(1, 0, 1), add(2, 2, 3), read(4, 5, [1])], {0: items(0, 1, 2)})
        self.assertEqual((report.stale, report.stale_kept), (1, 1))
        self.assertIn("lacked c0-2", report.stale_examples[0])

    def test_read_lacking_only_lost_items_is_stale_but_not_kept(self):
        """A read lacking only items that are lost at the end is stale; it is told apart from true staleness."""
        report = check([add(1, 0, 1), add(2, 2, 3), read(4, 5, [1])], {0: items(0, 1)})
        self.assertEqual((report.stale, report.stale_kept), (1, 0))

    def test_post_answer_is_a_read_too(self):
        """The list a POST returns must hold every item acknowledged before it started."""
        report = check([add(1, 0, 1), add(2, 2, 3, cart=[2])], {0: items(0, 1, 2)})
        self.assertEqual(report.stale, 1)

    def test_read_concurrent_with_acknowledgement_is_not_stale(self):
        """A read that started before the add's answer arrived may miss the item."""
        history = [add(1, 0, 1), add(2, 2, 5), Op(0, "read", 4, 6, 200, None, items(0, 1))]
        report = check(history, {0: items(0, 1, 2)})
        self.assertEqual(report.stale, 0)

    def test_read_lacking_what_an_earlier_read_returned_is_stale(self):
        """An item an earlier completed read returned (even unacknowledged) must not vanish from a later read."""
        history = [add(1, 0, 1), add(2, 2, 7, outcome=TIMEOUT), read(8, 9, [1, 2]), read(10, 11, [1])]
        report = check(history, {0: items(0, 1, 2)})
        self.assertEqual(report.stale, 1)

    def test_monotonic_reads_are_not_stale(self):
        """Reads that keep everything seen before are not stale."""
        history = [add(1, 0, 1), read(2, 3, [1]), add(2, 4, 5), read(6, 7, [1, 2])]
        self.assertEqual(check(history, {0: items(0, 1, 2)}).stale, 0)

    def test_failed_reads_are_not_judged(self):
        """A read that failed returned nothing, so it is neither stale nor dirty."""
        history = [add(1, 0, 1), read(2, 3, None, outcome=503)]
        report = check(history, {0: items(0, 1)})
        self.assertEqual((report.stale, report.dirty, report.reads), (0, 0, 1))


class DirtyTests(SynchronousTestCase):
    def test_item_seen_then_lost_is_a_dirty_read(self):
        """A read that returned an item absent from the final state is dirty."""
        history = [add(1, 0, 1), add(2, 2, 3, outcome=503), read(4, 5, [1, 2])]
        report = check(history, {0: items(0, 1)})
        self.assertEqual(report.dirty, 1)
        self.assertFalse(report.safe)

    def test_item_seen_and_kept_is_not_dirty(self):
        """A read that returned only items still there at the end is not dirty."""
        history = [add(1, 0, 1), add(2, 2, 3, outcome=TIMEOUT), read(4, 5, [1, 2])]
        self.assertEqual(check(history, {0: items(0, 1, 2)}).dirty, 0)


class OutcomeAndGapTests(SynchronousTestCase):
    def test_errors_by_status(self):
        """Every answer is counted by status, timeout or error kind."""
        history = [add(1, 0, 1), add(2, 1, 2, outcome=503), add(3, 2, 7, outcome=TIMEOUT), add(4, 7, 8, outcome="error:X")]
        report = check(history, {0: items(0, 1)})
        self.assertEqual(dict(report.outcomes), {200: 1, 503: 1, TIMEOUT: 1, "error:X": 1})

    def test_longest_wait_between_successes(self):
        """The longest wait runs from one successful answer to the next one of the same client."""
        history = [add(1, 0, 1), add(2, 1, 6, outcome=TIMEOUT), add(3, 6, 6.5), add(4, 6.5, 7, client=0, cart=[1, 3, 4])]
        history.append(add(1, 0, 2, client=1))
        report = check(history, {0: items(0, 1, 3, 4), 1: items(1, 1)})
        self.assertEqual((report.longest.client, report.longest.start, report.longest.end), (0, 1, 6.5))

    def test_wait_is_charged_to_the_fault_window_it_falls_in(self):
        """Per fault, the wait counts only the part inside that fault's window (until the next fault)."""
        faults = [Fault("cut s1-s2", 2.0, 4.0), Fault("pause s3", 10.0, 12.0)]
        history = [add(1, 0, 1), add(2, 1, 3), add(3, 3, 9.5, outcome=TIMEOUT), add(4, 9.5, 13, cart=[1, 2, 3, 4])]
        report = check(history, {0: items(0, 1, 2, 3, 4)}, faults)
        first, second = report.faults
        self.assertEqual((first.wait, second.wait), (7.0, 3.0))
        self.assertEqual((second.longest.start, second.longest.end), (3, 13))
        self.assertIn("longest wait during a fault: 7.00 s (cut s1-s2", report.render())


class AttributionTests(SynchronousTestCase):
    def test_loss_is_charged_where_it_went_missing(self):
        """A lost write counts against the fault whose window held the first read that missed it."""
        faults = [Fault("kill s1", 5.0, 6.0, ("s1",), {"s1": 3}), Fault("cut s2-s3", 20.0, 24.0, ("s2", "s3"))]
        history = [add(1, 0, 1), add(2, 2, 3), read(8, 9, [1]), read(21, 22, [1])]
        report = check(history, {0: items(0, 1)}, faults)
        self.assertEqual([w.lost for w in report.faults], [1, 0])
        self.assertEqual([w.stale for w in report.faults], [1, 1])
        self.assertIn("s1=3", report.render())

    def test_loss_never_missed_by_a_read_goes_to_the_last_read(self):
        """A write every later read still showed is charged to the window of the client's last read."""
        faults = [Fault("kill s1", 5.0, 6.0)]
        history = [add(1, 0, 1), add(2, 7, 8)]
        report = check(history, {0: items(0, 1)}, faults)
        self.assertEqual((report.faults[0].lost, report.lost_outside), (1, 0))
        report = check(history, {0: items(0, 1)}, [Fault("kill s1", 10.0, 11.0)])
        self.assertEqual((report.faults[0].lost, report.lost_outside), (0, 1))

    def test_render_names_every_figure(self):
        """The rendered report shows lost, unacknowledged, phantoms, stale, dirty and answers."""
        text = check([add(1, 0, 1), add(2, 2, 3)], {0: items(0, 1)}).render("== sync")
        for words in ("== sync", "lost acknowledged writes: 1 of 2 (50.00 %)", "appeared without acknowledgement",
                      "phantoms (never sent): 0", "stale reads: 0", "dirty reads: 1", "answers: 200: 2"):  # fmt: skip
            self.assertIn(words, text)
