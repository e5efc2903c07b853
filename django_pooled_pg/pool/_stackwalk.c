/* stacks.capture() in C: the same walk as the Python version in stacks.py, for CPython
 * 3.11+. Optional: when it does not build (no compiler, another Python), stacks.py uses
 * its Python version. Why C: the lease stack is taken on every lease at tracking="stacks",
 * and in Python each frame's step (three attribute lookups, two appends, the stop test) is
 * most of the tracking level's cost (bench/instructions.py: about 2,800 instructions a
 * frame).
 *
 * Two things make a capture cheap here:
 *
 * - On CPython 3.11 and 3.12 the walk reads the interpreter's own frame records
 *   (_PyInterpreterFrame, an internal header) instead of asking for frame objects: since
 *   3.11 a frame object exists only when someone asks for one, and PyFrame_GetBack() makes
 *   one for every frame it passes (an allocation, and a deallocation when the function
 *   returns), which was most of what a capture cost. Other versions use the public API.
 *
 * - A server takes the same few stacks over and over (one per view, or per call site in
 *   a view). A small table keeps the stacks taken last, as tuples, and a walk that finds
 *   the same code objects at the same offsets returns the stored tuple: no allocation at
 *   all. Stacks are immutable, so sharing one tuple between records is safe. The table
 *   holds its code objects alive (at most SLOTS stacks: bounded).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX < 0x030B0000
#error "needs PyFrame_GetLasti (CPython 3.11+); stacks.py falls back to Python"
#endif

#if PY_VERSION_HEX < 0x030D0000 && !defined(Py_GIL_DISABLED) && !defined(PYPY_VERSION)
#define WALK_FRAME_RECORDS 1
#ifndef Py_BUILD_CORE
#define Py_BUILD_CORE 1
#endif
#include "internal/pycore_frame.h"
#endif

/* The code objects where a walk stops (stacks.STOP_AT keeps it current): a tuple. */
static PyObject *stop_codes = NULL;

typedef struct {
    PyObject *code; /* borrowed: the frame is live (it is one of our callers) */
    long lasti;     /* in bytes, as frame.f_lasti; -1 if the frame has not started */
} Step;

/* The stored stacks: a tuple each (or NULL), found by the hash of their steps. */
#define SLOTS 64
static struct {
    PyObject *stack;
    Py_uhash_t hash;
} stored[SLOTS];

static int
is_stop(PyObject *stops, PyObject *code)
{
    Py_ssize_t n = stops == Py_None ? 0 : PyTuple_GET_SIZE(stops);
    for (Py_ssize_t j = 0; j < n; j++) {
        if (PyTuple_GET_ITEM(stops, j) == code)
            return 1;
    }
    return 0;
}

/* Append one step, growing the buffer past its initial stack-allocated size. */
static int
add_step(Step **steps, Py_ssize_t *n, Py_ssize_t *capacity, Step *initial, PyObject *code,
         long lasti)
{
    if (*n == *capacity) {
        Py_ssize_t grown = *capacity * 2;
        Step *bigger = PyMem_Malloc(grown * sizeof(Step));
        if (bigger == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(bigger, *steps, *n * sizeof(Step));
        if (*steps != initial)
            PyMem_Free(*steps);
        *steps = bigger;
        *capacity = grown;
    }
    (*steps)[*n].code = code;
    (*steps)[*n].lasti = lasti;
    (*n)++;
    return 0;
}

#ifdef WALK_FRAME_RECORDS
/* The frames PyFrame_GetBack() would pass over: not started yet (3.11 and 3.12), and the
 * C stack's entry frames (3.12). */
static _PyInterpreterFrame *
first_complete(_PyInterpreterFrame *frame)
{
    while (frame != NULL &&
           (_PyFrame_IsIncomplete(frame)
#if PY_VERSION_HEX >= 0x030C0000
            || frame->owner == FRAME_OWNED_BY_CSTACK
#endif
            ))
        frame = frame->previous;
    return frame;
}

/* The walk over the interpreter's frame records: nothing is allocated (so no garbage
 * collection and no finaliser can run during it). */
static int
walk(long skip, long limit, PyObject *stops, Step **steps, Py_ssize_t *n,
     Py_ssize_t *capacity, Step *initial)
{
    PyThreadState *tstate = PyThreadState_Get();
    /* A C function has no frame of its own: the current frame is our caller's. */
    _PyInterpreterFrame *frame = first_complete(tstate->cframe->current_frame);
    for (long i = 1; i < skip && frame != NULL; i++)
        frame = first_complete(frame->previous);
    for (long taken = 0; frame != NULL && taken < limit; taken++) {
        PyObject *code = (PyObject *)frame->f_code;
        int lasti = _PyInterpreterFrame_LASTI(frame);
        if (add_step(steps, n, capacity, initial, code,
                     lasti < 0 ? -1 : lasti * (long)sizeof(_Py_CODEUNIT)) < 0)
            return -1;
        if (is_stop(stops, code))
            break;
        frame = first_complete(frame->previous);
    }
    return 0;
}
#else
/* The walk through the public API: a frame object per frame. */
static int
walk(long skip, long limit, PyObject *stops, Step **steps, Py_ssize_t *n,
     Py_ssize_t *capacity, Step *initial)
{
    PyFrameObject *frame = PyEval_GetFrame();
    Py_XINCREF(frame);
    for (long i = 1; i < skip && frame != NULL; i++) {
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    for (long taken = 0; frame != NULL && taken < limit; taken++) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        Py_DECREF(code); /* (the live frame keeps it) */
        if (add_step(steps, n, capacity, initial, (PyObject *)code,
                     PyFrame_GetLasti(frame)) < 0) {
            Py_DECREF(frame);
            return -1;
        }
        PyFrameObject *back = is_stop(stops, (PyObject *)code) ? NULL : PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    Py_XDECREF(frame);
    return 0;
}
#endif

static Py_uhash_t
hash_steps(const Step *steps, Py_ssize_t n)
{
    Py_uhash_t hash = (Py_uhash_t)n;
    for (Py_ssize_t i = 0; i < n; i++) {
        hash = (hash ^ ((Py_uhash_t)(uintptr_t)steps[i].code >> 4)) * 1000003u;
        hash = (hash ^ (Py_uhash_t)steps[i].lasti) * 1000003u;
    }
    return hash;
}

static int
same_steps(PyObject *stack, const Step *steps, Py_ssize_t n)
{
    if (PyTuple_GET_SIZE(stack) != 2 * n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyTuple_GET_ITEM(stack, 2 * i) != steps[i].code ||
            PyLong_AsLong(PyTuple_GET_ITEM(stack, 2 * i + 1)) != steps[i].lasti)
            return 0;
    }
    return 1;
}

static PyObject *
new_stack(const Step *steps, Py_ssize_t n)
{
    PyObject *stack = PyTuple_New(2 * n);
    if (stack == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *lasti = PyLong_FromLong(steps[i].lasti);
        if (lasti == NULL) {
            Py_DECREF(stack);
            return NULL;
        }
        Py_INCREF(steps[i].code);
        PyTuple_SET_ITEM(stack, 2 * i, steps[i].code);
        PyTuple_SET_ITEM(stack, 2 * i + 1, lasti);
    }
    return stack;
}

/* capture(skip=1, limit=64) -> (code, lasti, code, lasti, ...), innermost first. */
static PyObject *
capture(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    long skip = 1, limit = 64;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "capture(skip=1, limit=64) takes at most 2 arguments");
        return NULL;
    }
    if (nargs > 0 && (skip = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred())
        return NULL;
    if (nargs > 1 && (limit = PyLong_AsLong(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    /* Our own reference: making a frame object (the public walk) or a tuple can run the
     * garbage collector, and a finaliser could replace the tuple meanwhile. */
    PyObject *stops = stop_codes ? stop_codes : Py_None;
    Py_INCREF(stops);
    Step initial[64];
    Step *steps = initial;
    Py_ssize_t n = 0, capacity = 64;
    PyObject *stack = NULL;
    if (walk(skip, limit, stops, &steps, &n, &capacity, initial) < 0)
        goto done;
    Py_uhash_t hash = hash_steps(steps, n);
    Py_ssize_t slot = (Py_ssize_t)(hash % SLOTS);
    PyObject *known = stored[slot].stack;
    if (known != NULL && stored[slot].hash == hash && same_steps(known, steps, n)) {
        Py_INCREF(known);
        stack = known;
        goto done;
    }
    stack = new_stack(steps, n);
    if (stack == NULL)
        goto done;
    /* Stored before the old one goes: its deallocation can run Python code (a weakref
     * callback of a code object), which may capture again. */
    PyObject *old = stored[slot].stack;
    Py_INCREF(stack);
    stored[slot].stack = stack;
    stored[slot].hash = hash;
    Py_XDECREF(old);
done:
    if (steps != initial)
        PyMem_Free(steps);
    Py_DECREF(stops);
    return stack;
}

static PyObject *
set_stop_codes(PyObject *module, PyObject *codes)
{
    if (!PyTuple_Check(codes)) {
        PyErr_SetString(PyExc_TypeError, "set_stop_codes() takes a tuple of code objects");
        return NULL;
    }
    Py_INCREF(codes);
    Py_XSETREF(stop_codes, codes);
    Py_RETURN_NONE;
}

static PyObject *
forget_stacks(PyObject *module, PyObject *unused)
{
    for (Py_ssize_t i = 0; i < SLOTS; i++)
        Py_CLEAR(stored[i].stack);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"capture", (PyCFunction)(void (*)(void))capture, METH_FASTCALL,
     "capture(skip=1, limit=64): the caller's stack, as stacks.capture(), as a tuple."},
    {"set_stop_codes", set_stop_codes, METH_O,
     "set_stop_codes(codes): the code objects where a walk stops (a tuple)."},
    {"forget_stacks", forget_stacks, METH_NOARGS,
     "forget_stacks(): drop the stored stacks (and the code objects they hold)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "django_pooled_pg.pool._stackwalk",
    "stacks.capture() in C (see stacks.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__stackwalk(void)
{
    return PyModule_Create(&module);
}
