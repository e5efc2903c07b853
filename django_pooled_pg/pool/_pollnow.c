/* The idle-socket check of every lease, without letting go of the GIL.
 *
 * A lease checks its connection's socket with poll(2) and a zero timeout: a killed
 * backend or a server shutdown has written its FATAL there by then. select.poll's
 * poll() releases the GIL around the system call, as it must when it may block; with a
 * zero timeout it never blocks, and the release is the expensive part when threads
 * outnumber connections: another thread takes the GIL, and the one that just took a
 * connection waits for it to come back, holding the connection unused meanwhile. With
 * 32 threads on 8 connections that was a GIL handoff per request
 * (bench/request_cycle.py --only threads).
 *
 * Poller(fd).poll(0) answers as a select.poll() object with fd registered for POLLIN
 * answers poll(0): true when the socket has something to read, is closed by the peer
 * or in error (poll's revents: POLLIN, POLLHUP, POLLERR, POLLNVAL). Only a zero timeout
 * is accepted: this must never block holding the GIL. Optional: without it, record.py
 * uses select.poll().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <poll.h>

typedef struct {
    PyObject_HEAD
    int fd;
} Poller;

static PyObject *
poller_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    int fd;
    static char *keywords[] = {"fd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i:Poller", keywords, &fd))
        return NULL;
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "fd must be a file descriptor >= 0, not %d", fd);
        return NULL;
    }
    Poller *self = (Poller *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->fd = fd;
    return (PyObject *)self;
}

static PyObject *
poller_poll(Poller *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "poll() takes one argument: the timeout, 0");
        return NULL;
    }
    long timeout = PyLong_AsLong(args[0]);
    if (timeout == -1 && PyErr_Occurred())
        return NULL;
    if (timeout != 0) {
        PyErr_Format(PyExc_ValueError,
                     "poll() takes a timeout of 0 only (it holds the GIL), not %ld", timeout);
        return NULL;
    }
    struct pollfd pfd = {self->fd, POLLIN, 0};
    int ready;
    do {
        ready = poll(&pfd, 1, 0);
    } while (ready < 0 && errno == EINTR);
    if (ready < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyBool_FromLong(ready > 0); /* (ready: the one fd has revents) */
}

static PyObject *
poller_get_fd(Poller *self, void *closure)
{
    return PyLong_FromLong(self->fd);
}

static PyMethodDef poller_methods[] = {
    {"poll", (PyCFunction)(void (*)(void))poller_poll, METH_FASTCALL,
     "poll(0): whether the socket is readable, closed or in error, without waiting."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef poller_getset[] = {
    {"fd", (getter)poller_get_fd, NULL, "the file descriptor checked", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PollerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "django_pooled_pg.pool._pollnow.Poller",
    .tp_basicsize = sizeof(Poller),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Poller(fd): a zero-timeout poll(2) of one socket for input, holding the GIL.",
    .tp_new = poller_new,
    .tp_methods = poller_methods,
    .tp_getset = poller_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "django_pooled_pg.pool._pollnow",
    "The idle-socket check of every lease, holding the GIL (see the source).", -1, NULL,
};

PyMODINIT_FUNC
PyInit__pollnow(void)
{
    if (PyType_Ready(&PollerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&PollerType);
    if (PyModule_AddObject(m, "Poller", (PyObject *)&PollerType) < 0) {
        Py_DECREF(&PollerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
