"""Stack capture: the C walker and the Python walker take the same stacks, and keep no frames."""

import gc
import platform
import subprocess
import sys
import unittest
import weakref

from django_pooled_pg.pool import stacks

from .helpers import PoolTestCase


def _nested(depth, take):
    """``take()`` called ``depth`` frames below this one."""
    if depth == 0:
        return take()
    return _nested(depth - 1, take)


def _stop_here(take):
    return _nested(3, take)  # a walk that reaches this frame stops in it


stacks.STOP_AT.add(_stop_here.__code__)


def _lines(stack):
    return [(code, stacks._lineno(code, lasti)) for code, lasti in stacks.frames(stack)]


def _walkers():
    found = {"Python": stacks.capture_python}
    if stacks._stackwalk is not None:
        found["C"] = stacks._stackwalk.capture
    return found


class StackCaptureTests(unittest.TestCase):
    def test_the_c_walker_is_built_where_it_can_be(self):
        # What the benchmarks measure is what the tests test: on CPython 3.11+ the
        # install compiles _stackwalk.c (optional only for machines without a compiler).
        if platform.python_implementation() == "CPython" and sys.version_info >= (3, 11):
            self.assertEqual(stacks.WALKER, "C")
            self.assertIs(stacks.capture, stacks._stackwalk.capture)
        else:
            self.assertEqual(stacks.WALKER, "Python")

    def test_both_walkers_take_the_same_stack(self):
        walkers = _walkers()
        for skip, limit, depth in [(1, 64, 4), (2, 64, 4), (3, 2, 6), (1, 1, 0), (4, 64, 10)]:
            taken = {
                name: _nested(depth, lambda walk=walk, s=skip, n=limit: walk(s, n))
                for name, walk in walkers.items()
            }
            python = taken.pop("Python")
            with self.subTest(skip=skip, limit=limit, depth=depth):
                self.assertLessEqual(len(python) // 2, limit)
                for name, stack in taken.items():
                    # Same code objects and lines. (Not always the same offsets: the
                    # caller's frame points at a call of a C function differently.)
                    self.assertEqual(_lines(stack), _lines(python), name)
                    self.assertEqual(list(stack[2:]), list(python[2:]), name)

    def test_both_walkers_agree_through_generators_coroutines_and_c_calls(self):
        # Frames a walk must step over or through: a generator's, a coroutine's, and the
        # entry frames CPython pushes where C code (sorted(), map()) calls back into Python.
        def in_generator(walk):
            yield _nested(2, walk)

        async def in_coroutine(walk):
            return _nested(2, walk)

        def run_coroutine(walk):
            coroutine = in_coroutine(walk)
            try:
                coroutine.send(None)
            except StopIteration as done:
                return done.value
            raise AssertionError("the coroutine did not finish")

        places = {
            "generator": lambda walk: next(in_generator(walk)),
            "coroutine": run_coroutine,
            "sorted key": lambda walk: sorted([1], key=lambda _: _nested(1, walk)) and walk.last,
            "map": lambda walk: list(map(lambda _: _nested(1, walk), [1])) and walk.last,
        }
        for place, call in places.items():
            taken = {}
            for name, walker in _walkers().items():

                def walk(walker=walker):
                    walk.last = walker(1)
                    return walk.last

                taken[name] = call(walk)
            with self.subTest(place):
                python = taken.pop("Python")
                self.assertGreater(len(python), 8)
                for name, stack in taken.items():
                    self.assertEqual(_lines(stack), _lines(python), name)

    def test_the_c_walker_hands_out_one_tuple_per_distinct_stack(self):
        # A server takes the same stacks again and again: the C walker keeps the last ones
        # and returns the same (immutable) tuple for the same frames at the same offsets.
        if stacks._stackwalk is None:
            self.skipTest("the C walker is not built here")
        walk = stacks._stackwalk.capture

        def site_a():
            return walk(1)

        def site_b():
            return walk(1)

        first = []
        for _ in range(3):
            first.append(site_a())  # the same frames, at the same offsets
        other = site_b()
        self.assertIsInstance(first[0], tuple)
        self.assertIs(first[0], first[1])
        self.assertIs(first[1], first[2])
        self.assertIsNot(other, first[0])
        self.assertEqual((first[0][0], other[0]), (site_a.__code__, site_b.__code__))
        self.assertEqual(list(other[4:]), list(first[0][4:]))  # the test's callers

        # A new stop frame changes the walk: a stored stack that went further is not reused.
        def stop_outer():
            return site_a()

        before = stop_outer()
        stacks.STOP_AT.add(stop_outer.__code__)
        after = stop_outer()
        self.assertGreater(len(before), len(after))
        self.assertEqual(after[-2], stop_outer.__code__)
        # forget_stacks() lets go of the code objects the stored stacks hold. (A code
        # object made at run time: a nested function's lives in its parent's constants.)
        namespace = {"walk": walk}
        exec(compile("def transient():\n    return walk(1)\n", "<transient>", "exec"), namespace)
        code_ref = weakref.ref(namespace["transient"].__code__)
        namespace.pop("transient")()
        gc.collect()
        self.assertIsNotNone(code_ref(), "a stored stack holds its code objects")
        stacks._stackwalk.forget_stacks()
        gc.collect()
        self.assertIsNone(code_ref())

    def test_a_walk_stops_at_a_stop_frame_and_formats_with_this_file_s_lines(self):
        for name, walk in _walkers().items():
            with self.subTest(name):
                stack = _stop_here(lambda walk=walk: walk(1))
                codes = [code for code, _ in stacks.frames(stack)]
                # lambda, _nested x4 (depth 3..0), then _stop_here, where it stops
                self.assertEqual([c.co_name for c in codes][-2:], ["_nested", "_stop_here"])
                self.assertEqual(len(codes), 6)
                text = stacks.format_stack(stack, hidden=(), show_hidden=True)
                self.assertIn("return _nested(3, take)  # a walk that reaches", text)
                self.assertIn(__file__, text)

    def test_a_stack_keeps_no_frame_and_no_local_alive(self):
        class Payload:
            pass

        for name, walk in _walkers().items():
            with self.subTest(name):

                def holder(walk=walk):
                    payload = Payload()  # a local of a captured frame
                    return walk(1), weakref.ref(payload)

                stack, ref = holder()
                gc.collect()
                self.assertIsNone(ref(), "the stack kept the frame's locals alive")
                self.assertTrue(stack)

    def test_bad_arguments_raise(self):
        if stacks._stackwalk is None:
            self.skipTest("the C walker is not built here")
        with self.assertRaises(TypeError):
            stacks._stackwalk.capture(1, 2, 3)
        with self.assertRaises(TypeError):
            stacks._stackwalk.capture("1")
        with self.assertRaises(TypeError):
            stacks._stackwalk.set_stop_codes([])

    def test_without_the_extension_the_python_walk_serves(self):
        # As on a machine where _stackwalk.c did not build: the import fails, and the
        # module still takes stacks and honours its stop frames.
        script = """
import sys
sys.modules["django_pooled_pg.pool._stackwalk"] = None  # the import now fails
from django_pooled_pg.pool import stacks
def stop(): return inner()
def inner(): return stacks.capture(1)
stacks.STOP_AT.add(stop.__code__)
stack = stacks.capture(1)
names = [code.co_name for code, _ in stacks.frames(stop())]
print(stacks.WALKER, stacks.capture is stacks.capture_python, bool(stack), names)
"""
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        )
        self.assertEqual(done.stdout.split(), ["Python", "True", "True", "['inner',", "'stop']"])


class TypedCodeTests(PoolTestCase):
    def test_code_typed_in_a_shell_counts_as_the_users_frame(self):
        # manage.py shell runs code.InteractiveConsole: its frames are "<console>".
        import code

        pool = self.make_pool(tracking="stacks")
        console = code.InteractiveConsole({"pool": pool})
        console.push("handle = pool.checkout()")
        handle = console.locals["handle"]
        self.addCleanup(handle.close)
        self.assertEqual(
            stacks.first_user_frame(handle.record.lease_stack), "<console>:1 in <module>"
        )
        self.assertTrue(stacks._is_hidden("<frozen importlib._bootstrap>", ()))
        self.assertTrue(stacks._is_hidden("<string>", ()))
