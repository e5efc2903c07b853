/* stacks.capture() in C: the same walk as the Python version in stacks.py, for CPython
 * 3.11+. Optional: when it does not build (no compiler, another Python), stacks.py uses
 * its Python version. Why C: the lease stack is taken on every lease at tracking="stacks",
 * and in Python each frame's step (three attribute lookups, two appends, the stop test) is
 * most of the tracking level's cost (bench/instructions.py: about 2,800 instructions a
 * frame); here it is the frame object CPython makes for PyFrame_GetBack and little else.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX < 0x030B0000
#error "needs PyFrame_GetLasti (CPython 3.11+); stacks.py falls back to Python"
#endif

/* The code objects where a walk stops (stacks.STOP_AT keeps it current): a tuple. */
static PyObject *stop_codes = NULL;

/* capture(skip=1, limit=64) -> [code, lasti, code, lasti, ...], innermost first. */
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
    PyObject *stack = PyList_New(0);
    if (stack == NULL)
        return NULL;
    /* Our own reference: making a frame object can run the GC, and a finaliser could
     * replace the tuple meanwhile. */
    PyObject *stops = stop_codes ? stop_codes : Py_None;
    Py_INCREF(stops);
    Py_ssize_t nstops = stops == Py_None ? 0 : PyTuple_GET_SIZE(stops);

    /* A C function has no frame of its own: the current frame is our caller's, which
     * the Python version reaches with sys._getframe(1). */
    PyFrameObject *frame = PyEval_GetFrame();
    Py_XINCREF(frame);
    for (long i = 1; i < skip && frame != NULL; i++) {
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    for (long taken = 0; frame != NULL && taken < limit; taken++) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        PyObject *lasti = PyLong_FromLong(PyFrame_GetLasti(frame));
        int failed = lasti == NULL || PyList_Append(stack, (PyObject *)code) < 0 ||
                     PyList_Append(stack, lasti) < 0;
        Py_XDECREF(lasti);
        int stop = 0;
        for (Py_ssize_t j = 0; j < nstops && !failed; j++) {
            if (PyTuple_GET_ITEM(stops, j) == (PyObject *)code) {
                stop = 1;
                break;
            }
        }
        Py_DECREF(code);
        if (failed) {
            Py_DECREF(frame);
            Py_DECREF(stops);
            Py_DECREF(stack);
            return NULL;
        }
        PyFrameObject *back = stop ? NULL : PyFrame_GetBack(frame);
        Py_DECREF(frame);
        frame = back;
    }
    Py_XDECREF(frame);
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

static PyMethodDef methods[] = {
    {"capture", (PyCFunction)(void (*)(void))capture, METH_FASTCALL,
     "capture(skip=1, limit=64): the caller's stack, as stacks.capture()."},
    {"set_stop_codes", set_stop_codes, METH_O,
     "set_stop_codes(codes): the code objects where a walk stops (a tuple)."},
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
