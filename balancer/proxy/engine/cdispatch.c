/*
 * balancer_cdispatch: the data plane's compiled loops (docs/architecture.md,
 * the engine path's step 5, and UDP).  An optional build (setup.py): where
 * it is missing, turned off with BALANCER_COMPILED=0, or built from other
 * sources (balancer/proxy/compiled.py checks INTERFACE and the slots), the
 * same loops run in Python.
 *
 * dispatch() takes the events of the relay engine's epoll set and calls
 * their descriptors exactly as Engine.doRead's Python loop does
 * (balancer/proxy/engine/engine.py).  For a plain relay socket (a
 * SplicedTransport, not a subclass) that is copying, the read and the write
 * to its peer are done here, in C, and the transport's Python methods are
 * called only for what is not a plain copy (its counting, its peer's
 * buffer, its end, a failure); once the direction splices, or its peer is
 * closed, the transport's own doRead goes on.
 *
 * read_links() is one round of LinkPoller.doRead (balancer/proxy/udp_links.py).
 *
 * Each must behave as its Python twin: the tests run both (tests/support/loops.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <limits.h>
#include <string.h>

#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef EPOLLRDHUP
#define EPOLLRDHUP 0x2000
#endif

#define MAX_EVENTS 1024
/* As balancer.proxy.engine.splice.COPY_SIZE and READS_PER_EVENT (exported: compiled.py compares them). */
#define COPY_SIZE 65536
#define READS_PER_EVENT 16
/* As balancer.proxy.udp_links.MAX_DATAGRAM: the largest UDP payload (the buffer holds it). */
#define MAX_DATAGRAM 65535

#define ENDS (EPOLLRDHUP | EPOLLHUP | EPOLLERR)
#define READABLE (EPOLLIN | ENDS)
#define WRITABLE (EPOLLOUT | EPOLLHUP | EPOLLERR)

/* Names looked up on every call, interned once. */
static PyObject *s_ending, *s_doRead, *s_doWrite, *s_failed, *s_read_again;
static PyObject *s_flush, *s_stop_reading, *s_end_of_input, *s_fail, *s_from_backend, *s_refused;
/* The bytes of one copying read (the engine runs in one thread, holding the GIL). */
static char buffer[COPY_SIZE];

enum { DONE = 0, FALL_BACK = 1, FAILED = -1 };

/*
 * The slots of the plain relay socket's class read and written here, by
 * their offsets in its instances (and its subclasses', which extend its
 * layout): found from its member descriptors when the module is bound to
 * the class (check(), or the first dispatch()), and never changed after:
 * Python code a dispatch calls cannot change the offsets it is using.
 */
enum { PEER, FD, CLOSED, SPLICING, COUNT, PENDING, BUFFERED, PLAIN, SLOTS };
static const char *slot_names[SLOTS] = {
    "_peer", "_fd", "_closed", "_splicing", "_count", "_pending", "_buffered", "_plain",
};
static Py_ssize_t slot_offsets[SLOTS];
static PyTypeObject *slots_of = NULL;

/* The slots' offsets in plain_type's instances, into offsets; 0, or -1 with an exception set. */
static int
find_slots(PyTypeObject *plain_type, Py_ssize_t offsets[SLOTS])
{
    for (int i = 0; i < SLOTS; i++) {
        PyObject *descriptor = PyObject_GetAttrString((PyObject *)plain_type, slot_names[i]);
        if (descriptor == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                return -1;
            PyErr_Clear();
            descriptor = Py_NewRef(Py_None);
        }
        /* A slot of the class or of one of its bases (the offset is valid in its instances). */
        int is_slot = Py_IS_TYPE(descriptor, &PyMemberDescr_Type) &&
                      ((PyMemberDescrObject *)descriptor)->d_member->type == T_OBJECT_EX &&
                      PyType_IsSubtype(plain_type, PyDescr_TYPE(descriptor));
        if (is_slot)
            offsets[i] = ((PyMemberDescrObject *)descriptor)->d_member->offset;
        Py_DECREF(descriptor);
        if (!is_slot) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", plain_type->tp_name, slot_names[i]);
            return -1;
        }
    }
    return 0;
}

/*
 * Bind the module to plain_type, the class whose slots it reads (the first
 * call), or check that it is bound to it; 0, or -1 with TypeError.
 */
static int
bind_slots(PyTypeObject *plain_type)
{
    if (slots_of == plain_type)
        return 0;
    Py_ssize_t offsets[SLOTS];
    if (find_slots(plain_type, offsets) < 0)
        return -1;
    if (slots_of != NULL) {
        PyErr_Format(PyExc_TypeError, "balancer_cdispatch reads the slots of %s, not of %s", slots_of->tp_name,
                     plain_type->tp_name);
        return -1;
    }
    memcpy(slot_offsets, offsets, sizeof offsets);
    slots_of = (PyTypeObject *)Py_NewRef(plain_type);
    return 0;
}

/* A slot's value (borrowed), or NULL with AttributeError when it is not set. */
static PyObject *
slot(PyObject *object, int which)
{
    PyObject *value = *(PyObject **)((char *)object + slot_offsets[which]);
    if (value == NULL)
        PyErr_Format(PyExc_AttributeError, "'%s' object has no attribute '%s'", Py_TYPE(object)->tp_name,
                     slot_names[which]);
    return value;
}

/* Set a slot to value (a new reference is taken). */
static void
set_slot(PyObject *object, int which, PyObject *value)
{
    PyObject **place = (PyObject **)((char *)object + slot_offsets[which]);
    PyObject *before = *place;
    Py_INCREF(value);
    *place = value;
    Py_XDECREF(before);
}

/*
 * A slot holding a bool or an int: its truth value in *truth, and DONE;
 * FALL_BACK when it holds another kind of object (whose truth would run
 * Python code); FAILED with an exception set when it is not set.
 */
static int
slot_flag(PyObject *object, int which, int *truth)
{
    PyObject *value = slot(object, which);
    if (value == NULL)
        return FAILED;
    if (!PyLong_CheckExact(value) && !PyBool_Check(value))
        return FALL_BACK;
    *truth = PyObject_IsTrue(value); /* an int's or a bool's: no Python code, no error */
    return DONE;
}

/* Call a method without arguments and drop its result; 0, or -1 with an exception set. */
static int
call_method(PyObject *object, PyObject *name)
{
    PyObject *result = PyObject_CallMethodNoArgs(object, name);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/*
 * Add buffer[from:to] to the bytes waiting for the peer (its _pending),
 * then have the peer flush; stop reading when it could not take them all.
 * DONE when the reading stopped, 1 when it may go on, FAILED.
 */
static int
pend_and_flush(PyObject *transport, PyObject *peer, PyObject *pending, Py_ssize_t from, Py_ssize_t to)
{
    PyObject *joined = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(pending) + (to - from));
    if (joined == NULL)
        return FAILED;
    memcpy(PyBytes_AS_STRING(joined), PyBytes_AS_STRING(pending), PyBytes_GET_SIZE(pending));
    memcpy(PyBytes_AS_STRING(joined) + PyBytes_GET_SIZE(pending), buffer + from, to - from);
    set_slot(peer, PENDING, joined);
    Py_DECREF(joined);
    PyObject *result = PyObject_CallMethodNoArgs(peer, s_flush);
    if (result == NULL)
        return FAILED;
    int flushed = PyObject_IsTrue(result);
    Py_DECREF(result);
    if (flushed < 0)
        return FAILED;
    if (!flushed)
        return call_method(transport, s_stop_reading) < 0 ? FAILED : DONE;
    return 1;
}

/* A file descriptor slot as an int; -1 with an exception set. */
static int
slot_fd(PyObject *object)
{
    PyObject *value = slot(object, FD);
    if (value == NULL)
        return -1;
    if (!PyLong_CheckExact(value)) {
        PyErr_SetString(PyExc_TypeError, "a relay socket's file descriptor is not an int");
        return -1;
    }
    long fd = PyLong_AsLong(value);
    if (fd < 0 || fd > INT_MAX) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a relay socket's file descriptor is not one");
        return -1;
    }
    return (int)fd;
}

/*
 * SplicedTransport.doRead while its direction copies: DONE, FALL_BACK
 * (the transport's doRead goes on from here: not spliced yet, the peer is
 * closed or not a relay socket, or the direction splices), or FAILED.
 */
static int
copy_read(PyObject *engine, PyObject *transport, int ending, PyTypeObject *plain_type)
{
    PyObject *peer = slot(transport, PEER);
    if (peer == NULL)
        return FAILED;
    if (!PyObject_TypeCheck(peer, plain_type))
        return FALL_BACK; /* None before splice(): its doRead says so */
    Py_INCREF(peer);
    int result = FAILED;
    int fd = slot_fd(transport);
    if (fd < 0)
        goto out;
    int peer_fd = slot_fd(peer);
    if (peer_fd < 0)
        goto out;
    for (int i = 0; i < READS_PER_EVENT; i++) {
        /* Every flag before the read: from the read until its bytes are written or kept, no Python code runs. */
        int closed = 0, splicing = 0, buffered = 0, plain = 0;
        int kind = slot_flag(peer, CLOSED, &closed);
        if (kind == DONE)
            kind = slot_flag(transport, SPLICING, &splicing);
        if (kind == DONE)
            kind = slot_flag(peer, BUFFERED, &buffered);
        if (kind == DONE)
            kind = slot_flag(peer, PLAIN, &plain);
        if (kind != DONE) {
            result = kind;
            goto out;
        }
        if (closed || splicing) {
            result = FALL_BACK;
            goto out;
        }
        ssize_t size;
        do {
            size = read(fd, buffer, COPY_SIZE);
        } while (size < 0 && errno == EINTR);
        if (size < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                result = DONE;
                goto out;
            }
            result = call_method(transport, s_fail) < 0 ? FAILED : DONE;
            goto out;
        }
        if (size == 0) {
            result = call_method(transport, s_end_of_input) < 0 ? FAILED : DONE;
            goto out;
        }
        PyObject *pending = slot(peer, PENDING);
        if (pending == NULL)
            goto out;
        if (!PyBytes_CheckExact(pending)) {
            PyErr_SetString(PyExc_TypeError, "a relay socket's pending bytes are not bytes");
            goto out;
        }
        int go_on = 1;
        Py_INCREF(pending);
        if (PyBytes_GET_SIZE(pending) || buffered || !plain) {
            go_on = pend_and_flush(transport, peer, pending, 0, size);
        } else {
            /* The peer holds nothing: send at once; what it cannot take waits in its buffer. */
            ssize_t sent;
            do {
                sent = write(peer_fd, buffer, (size_t)size);
            } while (sent < 0 && errno == EINTR);
            if (sent < 0)
                sent = 0;
            if (sent < size)
                go_on = pend_and_flush(transport, peer, pending, sent, size);
        }
        Py_DECREF(pending);
        if (go_on == FAILED)
            goto out;
        /* Counted once the buffer is written or copied: no Python code runs while it holds bytes. */
        PyObject *count = slot(transport, COUNT);
        if (count == NULL)
            goto out;
        Py_INCREF(count);
        PyObject *moved = PyLong_FromSsize_t(size);
        PyObject *counted = moved == NULL ? NULL : PyObject_CallOneArg(count, moved);
        Py_XDECREF(moved);
        Py_DECREF(count);
        if (counted == NULL)
            goto out;
        Py_DECREF(counted);
        if (go_on == DONE) {
            result = DONE;
            goto out;
        }
        if (size == COPY_SIZE) {
            PyObject *peer_plain = slot(peer, PLAIN);
            if (peer_plain == NULL)
                goto out;
            set_slot(transport, SPLICING, peer_plain);
            continue;
        }
        if ((ending & EPOLLRDHUP) && !(ending & EPOLLERR)) {
            /* The peer's end came after all its bytes, and this short read took them all. */
            result = call_method(transport, s_end_of_input) < 0 ? FAILED : DONE;
            goto out;
        }
        if (!ending) {
            result = DONE;
            goto out;
        }
    }
    {
        PyObject *again = PyObject_CallMethodOneArg(engine, s_read_again, transport);
        if (again == NULL)
            goto out;
        Py_DECREF(again);
        result = DONE;
    }
out:
    Py_DECREF(peer);
    return result;
}

/*
 * Call target(argument), or its method name(argument) when name is not
 * NULL, while the exception raised is being handled (so that a Failure()
 * or log.failure() made there takes it), then drop it.  0, or -1 when the
 * exception is not an Exception (it is left set, to leave the loop) or the
 * call raised.
 */
static int
call_while_handling(PyObject *target, PyObject *name, PyObject *argument)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL)
        PyException_SetTraceback(value, traceback);
    PyObject *before = PyErr_GetHandledException();
    PyErr_SetHandledException(value);
    PyObject *result = name == NULL ? PyObject_CallOneArg(target, argument)
                                    : PyObject_CallMethodOneArg(target, name, argument);
    PyErr_SetHandledException(before);
    Py_XDECREF(before);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/*
 * The descriptor wanted for key's event (a new reference); or NULL: none
 * wants it, and a watched socket remembers it (unseen[fd] |= flag), or
 * an error is set.
 */
static PyObject *
wanted_or_remembered(PyObject *wanted, PyObject *unseen, PyObject *key, long flag)
{
    PyObject *descriptor = PyDict_GetItemWithError(wanted, key);
    if (descriptor != NULL)
        return Py_NewRef(descriptor);
    if (PyErr_Occurred())
        return NULL;
    PyObject *before = PyDict_GetItemWithError(unseen, key);
    if (before == NULL)
        return NULL;
    long value = PyLong_AsLong(before);
    if (value == -1 && PyErr_Occurred())
        return NULL;
    PyObject *after = PyLong_FromLong(value | flag);
    if (after != NULL) {
        PyDict_SetItem(unseen, key, after);
        Py_DECREF(after);
    }
    return NULL;
}

static PyObject *
dispatch(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError,
                        "dispatch(engine, epoll_fd, readers, writers, unseen, gone, plain_type) takes 7 arguments");
        return NULL;
    }
    PyObject *engine = args[0], *readers = args[2], *writers = args[3], *unseen = args[4], *gone = args[5];
    PyTypeObject *plain_type = (PyTypeObject *)args[6];
    long epoll_fd = PyLong_AsLong(args[1]);
    if (epoll_fd == -1 && PyErr_Occurred())
        return NULL;
    if (epoll_fd < 0 || epoll_fd > INT_MAX || !PyDict_CheckExact(readers) || !PyDict_CheckExact(writers) ||
        !PyDict_CheckExact(unseen) || !PyAnySet_CheckExact(gone) || !PyType_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "dispatch() takes a descriptor, three dicts, a set and a type");
        return NULL;
    }
    if (bind_slots(plain_type) < 0)
        return NULL;
    struct epoll_event events[MAX_EVENTS];
    int n;
    do {
        n = epoll_wait((int)epoll_fd, events, MAX_EVENTS, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    for (int i = 0; i < n; i++) {
        uint32_t what = events[i].events;
        PyObject *key = PyLong_FromLong(events[i].data.fd);
        if (key == NULL)
            return NULL;
        int contained = PySet_Contains(gone, key);
        if (contained) {
            Py_DECREF(key);
            if (contained < 0)
                return NULL;
            continue;
        }
        int ending = what & ENDS;
        PyObject *ending_object = PyLong_FromLong(ending);
        if (ending_object == NULL || PyObject_SetAttr(engine, s_ending, ending_object) < 0) {
            Py_XDECREF(ending_object);
            Py_DECREF(key);
            return NULL;
        }
        Py_DECREF(ending_object);
        PyObject *descriptor = NULL;
        int raised = 0;
        if (what & READABLE) {
            descriptor = wanted_or_remembered(readers, unseen, key, EPOLLIN);
            if (descriptor == NULL) {
                if (PyErr_Occurred()) {
                    Py_DECREF(key);
                    return NULL;
                }
            } else {
                int done = FALL_BACK;
                if (Py_TYPE(descriptor) == plain_type)
                    done = copy_read(engine, descriptor, ending, plain_type);
                if (done == FALL_BACK)
                    done = call_method(descriptor, s_doRead);
                if (done < 0) {
                    raised = 1;
                } else {
                    Py_DECREF(descriptor);
                    descriptor = NULL;
                    contained = PySet_Contains(gone, key);
                    if (contained) {
                        Py_DECREF(key);
                        if (contained < 0)
                            return NULL;
                        continue;
                    }
                }
            }
        }
        if (!raised && (what & WRITABLE)) {
            descriptor = wanted_or_remembered(writers, unseen, key, EPOLLOUT);
            if (descriptor == NULL) {
                if (PyErr_Occurred()) {
                    Py_DECREF(key);
                    return NULL;
                }
            } else {
                if (call_method(descriptor, s_doWrite) < 0)
                    raised = 1;
                else {
                    Py_DECREF(descriptor);
                    descriptor = NULL;
                }
            }
        }
        Py_DECREF(key);
        if (raised) {
            /* Engine._failed logs it, closes it and makes the ending unknown again. */
            int handled = call_while_handling(engine, s_failed, descriptor);
            Py_DECREF(descriptor);
            if (handled < 0)
                return NULL;
        }
    }
    Py_RETURN_NONE;
}

/*
 * read_links(epoll_fd, links, max_events, failed): LinkPoller.doRead's
 * round (balancer/proxy/udp_links.py), compiled.  Take the ready sockets of
 * the UDP sessions' epoll set, read one datagram from each and give it to
 * its session (links: descriptor -> (socket, session)); an error other
 * than "nothing to read" is the session's refusal.  A session that raises
 * loses that datagram only: failed(socket) is called while its exception
 * is being handled, to log it.  Returns how many sockets were ready.
 */
static PyObject *
read_links(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "read_links(epoll_fd, links, max_events, failed) takes 4 arguments");
        return NULL;
    }
    PyObject *links = args[1], *failed = args[3];
    long epoll_fd = PyLong_AsLong(args[0]);
    long max_events = PyLong_AsLong(args[2]);
    if ((epoll_fd == -1 || max_events == -1) && PyErr_Occurred())
        return NULL;
    if (!PyDict_CheckExact(links) || !PyCallable_Check(failed) || epoll_fd < 0 || epoll_fd > INT_MAX ||
        max_events < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "read_links() takes a descriptor, a dict, a positive number of events and a callable");
        return NULL;
    }
    if (max_events > MAX_EVENTS)
        max_events = MAX_EVENTS;
    struct epoll_event events[MAX_EVENTS];
    int n;
    do {
        n = epoll_wait((int)epoll_fd, events, (int)max_events, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    for (int i = 0; i < n; i++) {
        int fd = events[i].data.fd;
        PyObject *key = PyLong_FromLong(fd);
        if (key == NULL)
            return NULL;
        PyObject *link = PyDict_GetItemWithError(links, key);
        Py_DECREF(key);
        if (link == NULL) {
            if (PyErr_Occurred())
                return NULL;
            continue; /* its session ended in this batch */
        }
        if (!PyTuple_CheckExact(link) || PyTuple_GET_SIZE(link) != 2) {
            PyErr_SetString(PyExc_TypeError, "a link is not a (socket, session) tuple");
            return NULL;
        }
        PyObject *sock = PyTuple_GET_ITEM(link, 0), *session = PyTuple_GET_ITEM(link, 1);
        Py_INCREF(sock);
        Py_INCREF(session);
        ssize_t size;
        do {
            size = recv(fd, buffer, MAX_DATAGRAM, 0);
        } while (size < 0 && errno == EINTR);
        PyObject *result = NULL;
        if (size < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                Py_DECREF(sock);
                Py_DECREF(session);
                continue;
            }
            result = PyObject_CallMethodNoArgs(session, s_refused);
        } else {
            PyObject *data = PyBytes_FromStringAndSize(buffer, size);
            if (data != NULL) {
                result = PyObject_CallMethodOneArg(session, s_from_backend, data);
                Py_DECREF(data);
            }
        }
        int handled = 0;
        if (result == NULL)
            handled = call_while_handling(failed, NULL, sock);
        else
            Py_DECREF(result);
        Py_DECREF(sock);
        Py_DECREF(session);
        if (handled < 0)
            return NULL;
    }
    return PyLong_FromLong(n);
}

static PyObject *
check(PyObject *Py_UNUSED(module), PyObject *plain_type)
{
    if (!PyType_Check(plain_type)) {
        PyErr_SetString(PyExc_TypeError, "check() takes a type");
        return NULL;
    }
    if (bind_slots((PyTypeObject *)plain_type) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read_links", (PyCFunction)(void (*)(void))read_links, METH_FASTCALL,
     "read_links(epoll_fd, links, max_events, failed) -> int: read one datagram from each ready UDP "
     "session socket and give it to its session, as LinkPoller.doRead's round does."},
    {"check", check, METH_O,
     "check(plain_type): bind the module to plain_type, whose slots dispatch() reads and writes; raise "
     "TypeError unless it has them, or when the module is bound to another class."},
    {"dispatch", (PyCFunction)(void (*)(void))dispatch, METH_FASTCALL,
     "dispatch(engine, epoll_fd, readers, writers, unseen, gone, plain_type): take the ready events of "
     "the engine's epoll set and call their descriptors, as Engine.doRead's loop does."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "balancer_cdispatch",
    "The relay engine's dispatch loop, compiled (an optional build).", -1, methods, NULL, NULL, NULL, NULL,
};

#define INTERN(variable, text)                                                                                         \
    if ((variable = PyUnicode_InternFromString(text)) == NULL)                                                         \
        return NULL;

/*
 * What the Python side expects of this module (balancer.proxy.engine.engine
 * checks it): raised with each change of what dispatch() does or of the
 * transport it reads, so that a stale build is not used.
 */
#define INTERFACE 3

PyMODINIT_FUNC
PyInit_balancer_cdispatch(void)
{
    INTERN(s_ending, "ending");
    INTERN(s_doRead, "doRead");
    INTERN(s_doWrite, "doWrite");
    INTERN(s_failed, "_failed");
    INTERN(s_read_again, "read_again");
    INTERN(s_flush, "_flush");
    INTERN(s_stop_reading, "_stop_reading");
    INTERN(s_end_of_input, "_end_of_input");
    INTERN(s_fail, "_fail");
    INTERN(s_from_backend, "from_backend");
    INTERN(s_refused, "refused");
    PyObject *created = PyModule_Create(&module);
    if (created != NULL && (PyModule_AddIntConstant(created, "INTERFACE", INTERFACE) < 0 ||
                            PyModule_AddIntConstant(created, "COPY_SIZE", COPY_SIZE) < 0 ||
                            PyModule_AddIntConstant(created, "READS_PER_EVENT", READS_PER_EVENT) < 0))
        Py_CLEAR(created);
    return created;
}
