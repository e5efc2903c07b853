/* Tracker.run() in C: time one statement, count it in the query statistics, and note
 * where it ran. Optional: when it does not build, tracker.py runs its Python version,
 * which does the same. Why C: at tracking="counters" and above every statement comes
 * through here, and in Python the bookkeeping (two clock reads, four attribute stores,
 * a lock round and four list updates) cost about 5,000 instructions a statement
 * (bench/instructions.py), about as much as psycopg2's execute() of a SELECT 1.
 *
 * The statistics are QueryStats': a dict from SQL text to its shape's entry, a list
 * [count, total seconds, max seconds, rows]. The Python version updates an entry under
 * QueryStats' lock. Here a known text's entry is found and updated with no lock: with
 * the GIL held and no Python code run in between (exact str or bytes keys hash and
 * compare in C; ints and floats are made and freed without the garbage collector), the
 * update is atomic for every other thread. New text goes to QueryStats.entry_for(),
 * which makes or finds the entry under the lock; the update is then made here, the same
 * way. An update can land on an entry that an eviction or reset() is dropping: as if it
 * had come just before.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *by_sql;    /* QueryStats.by_sql: SQL text -> entry (never rebound) */
    PyObject *entry_for; /* QueryStats.entry_for(sql) -> entry, under its lock */
    PyObject *rowcount;  /* psycopg2's cursor.rowcount descriptor */
    PyObject *clock;     /* time.monotonic: the clock everything else reads */
    PyObject *capture;   /* stacks.capture, or None: no execute stacks */
    PyObject *capture_args; /* (skip, limit) for capture() */
    long idle;           /* psycopg2's TRANSACTION_STATUS_IDLE */
} QueryTimer;

static PyObject *str_last_query, *str_query_started, *str_query_ended, *str_conn,
    *str_autocommit, *str_get_transaction_status, *str_execute_stack, *float_zero;

/* A timer is in a reference cycle (QueryStats -> its add, timer.count -> the timer ->
 * entry_for -> QueryStats): it takes part in garbage collection, or every pool's
 * statistics would outlive the pool. */
static int
timer_traverse(QueryTimer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->by_sql);
    Py_VISIT(self->entry_for);
    Py_VISIT(self->rowcount);
    Py_VISIT(self->clock);
    Py_VISIT(self->capture);
    return 0;
}

static int
timer_clear(QueryTimer *self)
{
    Py_CLEAR(self->by_sql);
    Py_CLEAR(self->entry_for);
    Py_CLEAR(self->rowcount);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->capture);
    Py_CLEAR(self->capture_args);
    return 0;
}

static void
timer_dealloc(QueryTimer *self)
{
    PyObject_GC_UnTrack(self);
    timer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
timer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"by_sql", "entry_for",   "rowcount", "clock",
                            "capture", "stack_frames", "idle",    NULL};
    PyObject *by_sql, *entry_for, *rowcount, *clock, *capture;
    long stack_frames, idle;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOOOll:QueryTimer", names, &PyDict_Type,
                                     &by_sql, &entry_for, &rowcount, &clock, &capture,
                                     &stack_frames, &idle))
        return NULL;
    if (Py_TYPE(rowcount)->tp_descr_get == NULL) {
        PyErr_SetString(PyExc_TypeError, "QueryTimer: rowcount must be a descriptor");
        return NULL;
    }
    /* capture(2, ...): no Python frame of ours, so 2 frames up is the cursor's caller,
     * as capture(3, ...) is from the Python version of run(). */
    PyObject *capture_args = Py_BuildValue("(il)", 2, stack_frames);
    if (capture_args == NULL)
        return NULL;
    QueryTimer *self = (QueryTimer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(capture_args);
        return NULL;
    }
    self->capture_args = capture_args;
    Py_INCREF(by_sql);
    self->by_sql = by_sql;
    Py_INCREF(entry_for);
    self->entry_for = entry_for;
    Py_INCREF(rowcount);
    self->rowcount = rowcount;
    Py_INCREF(clock);
    self->clock = clock;
    Py_INCREF(capture);
    self->capture = capture;
    self->idle = idle;
    return (PyObject *)self;
}

/* entry[index] = value (a new reference, stolen; NULL: fail). */
static int
set_item(PyObject *entry, Py_ssize_t index, PyObject *value)
{
    if (value == NULL)
        return -1;
    PyList_SET_ITEM(entry, index, value); /* (the old value is released below) */
    return 0;
}

/* The entry's update: count + runs, total + seconds, max(max, longest), rows + rows.
 * No Python code runs. */
static int
count_into(PyObject *entry, int runs, double seconds, double longest_run, long long rows)
{
    if (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 4) {
        PyErr_SetString(PyExc_TypeError, "a query statistics entry must be a list of 4");
        return -1;
    }
    PyObject *count = PyList_GET_ITEM(entry, 0), *total = PyList_GET_ITEM(entry, 1),
             *longest = PyList_GET_ITEM(entry, 2), *rows_sum = PyList_GET_ITEM(entry, 3);
    if (!PyLong_CheckExact(count) || !PyFloat_CheckExact(total) ||
        !PyFloat_CheckExact(longest) || !PyLong_CheckExact(rows_sum)) {
        PyErr_SetString(PyExc_TypeError,
                        "a query statistics entry must be [int, float, float, int]");
        return -1;
    }
    long long n = PyLong_AsLongLong(count), r = PyLong_AsLongLong(rows_sum);
    if ((n == -1 || r == -1) && PyErr_Occurred())
        return -1;
    if (runs > 0) {
        if (set_item(entry, 0, PyLong_FromLongLong(n + runs)) < 0)
            return -1;
        Py_DECREF(count);
    }
    if (set_item(entry, 1, PyFloat_FromDouble(PyFloat_AS_DOUBLE(total) + seconds)) < 0)
        return -1;
    Py_DECREF(total);
    if (longest_run > PyFloat_AS_DOUBLE(longest)) {
        if (set_item(entry, 2, PyFloat_FromDouble(longest_run)) < 0)
            return -1;
        Py_DECREF(longest);
    }
    if (rows > 0) {
        if (set_item(entry, 3, PyLong_FromLongLong(r + rows)) < 0)
            return -1;
        Py_DECREF(rows_sum);
    }
    return 0;
}

static int
count_query(QueryTimer *self, PyObject *query, int runs, double seconds, double longest_run,
            long long rows)
{
    PyObject *entry = NULL; /* borrowed when found in by_sql */
    int owned = 0;
    if (PyUnicode_CheckExact(query) || PyBytes_CheckExact(query)) {
        entry = PyDict_GetItemWithError(self->by_sql, query);
        if (entry == NULL && PyErr_Occurred())
            return -1;
    }
    if (entry == NULL) { /* new text, or a type whose hash could run Python code */
        entry = PyObject_CallOneArg(self->entry_for, query);
        if (entry == NULL)
            return -1;
        owned = 1;
    }
    int failed = count_into(entry, runs, seconds, longest_run, rows);
    if (owned)
        Py_DECREF(entry);
    return failed;
}

/* The rest of Python's "finally:" block: everything after the statement ran. */
static int
after_statement(QueryTimer *self, PyObject *record, PyObject *query, PyObject *cursor,
                PyObject *started)
{
    PyObject *ended = PyObject_CallNoArgs(self->clock);
    if (ended == NULL)
        return -1;
    double seconds = PyFloat_AsDouble(ended) - PyFloat_AsDouble(started);
    int failed = (seconds == -1.0 && PyErr_Occurred()) ||
                 PyObject_SetAttr(record, str_query_ended, ended) < 0 ||
                 PyObject_SetAttr(record, str_query_started, float_zero) < 0;
    Py_DECREF(ended);
    if (failed)
        return -1;
    PyObject *rowcount =
        Py_TYPE(self->rowcount)->tp_descr_get(self->rowcount, cursor, (PyObject *)Py_TYPE(cursor));
    if (rowcount == NULL)
        return -1;
    long long rows = PyLong_AsLongLong(rowcount);
    Py_DECREF(rowcount);
    if (rows == -1 && PyErr_Occurred())
        return -1;
    if (count_query(self, query, 1, seconds, seconds, rows < 0 ? 0 : rows) < 0)
        return -1;
    if (self->capture == Py_None)
        return 0;
    /* Execute stacks only matter for a connection left idle in a transaction: taken only
     * when one is open (not autocommit, or a BEGIN sent as SQL). */
    PyObject *conn = PyObject_GetAttr(record, str_conn);
    if (conn == NULL)
        return -1;
    PyObject *autocommit = PyObject_GetAttr(conn, str_autocommit);
    int in_transaction = autocommit == NULL ? -1 : !PyObject_IsTrue(autocommit);
    Py_XDECREF(autocommit);
    if (in_transaction == 0) {
        PyObject *status = PyObject_CallMethodNoArgs(conn, str_get_transaction_status);
        long value = status == NULL ? -1 : PyLong_AsLong(status);
        Py_XDECREF(status);
        in_transaction = value == -1 && PyErr_Occurred() ? -1 : value != self->idle;
    }
    Py_DECREF(conn);
    if (in_transaction <= 0)
        return in_transaction;
    PyObject *stack = PyObject_Call(self->capture, self->capture_args, NULL);
    if (stack == NULL)
        return -1;
    failed = PyObject_SetAttr(record, str_execute_stack, stack);
    Py_DECREF(stack);
    return failed;
}

/* run(record, method, query, args, cursor): method(query, args), timed and counted. */
static PyObject *
timer_run(QueryTimer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "run(record, method, query, args, cursor)");
        return NULL;
    }
    if (self->clock == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "QueryTimer: cleared by the garbage collector");
        return NULL;
    }
    PyObject *record = args[0], *method = args[1], *query = args[2], *cursor = args[4];
    if (PyObject_SetAttr(record, str_last_query, query) < 0)
        return NULL;
    PyObject *started = PyObject_CallNoArgs(self->clock);
    if (started == NULL)
        return NULL;
    if (PyObject_SetAttr(record, str_query_started, started) < 0) {
        Py_DECREF(started);
        return NULL;
    }
    PyObject *call_args[2] = {query, args[3]};
    PyObject *result = PyObject_Vectorcall(method, call_args, 2, NULL);
    /* As Python's "finally:": the statement's own error, if any, is kept aside and
     * raised after; an error of the bookkeeping replaces it, with it as its context. */
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    int failed = after_statement(self, record, query, cursor, started);
    Py_DECREF(started);
    if (failed < 0) {
        Py_XDECREF(result);
        if (type != NULL) {
            PyObject *type2, *value2, *traceback2;
            PyErr_NormalizeException(&type, &value, &traceback);
            if (traceback != NULL)
                PyException_SetTraceback(value, traceback);
            PyErr_Fetch(&type2, &value2, &traceback2);
            PyErr_NormalizeException(&type2, &value2, &traceback2);
            PyException_SetContext(value2, value); /* steals value */
            Py_DECREF(type);
            Py_XDECREF(traceback);
            PyErr_Restore(type2, value2, traceback2);
        }
        return NULL;
    }
    if (type != NULL) {
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    return result;
}

/* count() and add_fetch(): (query, seconds, rows) and, for a FETCH, its run's seconds so
 * far; ``runs`` is what the call adds to the count (1, or 0 for a FETCH). */
static PyObject *
count_from_args(QueryTimer *self, PyObject *const *args, Py_ssize_t nargs, int runs,
                const char *usage)
{
    if (nargs != (runs ? 3 : 4)) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    if (self->by_sql == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "QueryTimer: cleared by the garbage collector");
        return NULL;
    }
    double seconds = PyFloat_AsDouble(args[1]);
    if (seconds == -1.0 && PyErr_Occurred())
        return NULL;
    long long rows = PyLong_AsLongLong(args[2]);
    if (rows == -1 && PyErr_Occurred())
        return NULL;
    double longest_run = runs ? seconds : PyFloat_AsDouble(args[3]);
    if (longest_run == -1.0 && PyErr_Occurred())
        return NULL;
    if (count_query(self, args[0], runs, seconds, longest_run, rows < 0 ? 0 : rows) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
timer_count(QueryTimer *self, PyObject *const *args, Py_ssize_t nargs)
{
    return count_from_args(self, args, nargs, 1, "count(query, seconds, rows)");
}

/* add_fetch(query, seconds, rows, run_seconds): a named cursor's FETCH, as QueryStats's. */
static PyObject *
timer_add_fetch(QueryTimer *self, PyObject *const *args, Py_ssize_t nargs)
{
    return count_from_args(self, args, nargs, 0, "add_fetch(query, seconds, rows, run_seconds)");
}

static PyMethodDef timer_methods[] = {
    {"run", (PyCFunction)(void (*)(void))timer_run, METH_FASTCALL,
     "run(record, method, query, args, cursor): method(query, args), timed and counted."},
    {"count", (PyCFunction)(void (*)(void))timer_count, METH_FASTCALL,
     "count(query, seconds, rows): count one run of query, as run() does."},
    {"add_fetch", (PyCFunction)(void (*)(void))timer_add_fetch, METH_FASTCALL,
     "add_fetch(query, seconds, rows, run_seconds): a named cursor's FETCH of query's rows."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject QueryTimerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "django_pooled_pg.pool._querytimer.QueryTimer",
    .tp_basicsize = sizeof(QueryTimer),
    .tp_dealloc = (destructor)timer_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)timer_traverse,
    .tp_clear = (inquiry)timer_clear,
    .tp_doc = "QueryTimer(by_sql, entry_for, rowcount, clock, capture, stack_frames, idle): "
              "see tracker.py.",
    .tp_methods = timer_methods,
    .tp_new = timer_new,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "django_pooled_pg.pool._querytimer",
    "Tracker.run() in C (see tracker.py).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__querytimer(void)
{
    if (PyType_Ready(&QueryTimerType) < 0)
        return NULL;
#define INTERN(var, text)                                                                  \
    if ((var = PyUnicode_InternFromString(text)) == NULL)                                  \
        return NULL;
    INTERN(str_last_query, "last_query");
    INTERN(str_query_started, "query_started");
    INTERN(str_query_ended, "query_ended");
    INTERN(str_conn, "conn");
    INTERN(str_autocommit, "autocommit");
    INTERN(str_get_transaction_status, "get_transaction_status");
    INTERN(str_execute_stack, "execute_stack");
#undef INTERN
    if ((float_zero = PyFloat_FromDouble(0.0)) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&QueryTimerType);
    if (PyModule_AddObject(m, "QueryTimer", (PyObject *)&QueryTimerType) < 0) {
        Py_DECREF(&QueryTimerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
