/* One-pass decoder and checker for Prophesee .dat (EVT 2.0 "Event2D") records.
 *
 * spikedet.data.gen1.read_dat_body calls decode() once per chunk of raw records. Each
 * 8-byte record is two little-endian uint32 words: t (microseconds) and
 * w = x | y << 14 | p << 28 (x, y: 14 bits; bits 29-31 must be clear, so p is 0 or 1).
 * The output rows are EVENT_DTYPE (16 bytes): int64 t, then uint32 x | y << 16, then uint32 p
 * (p's byte and three zero padding bytes), the layout the numpy decoder writes.
 *
 * The checks are the numpy decoder's: timestamps never below the running maximum (or, with
 * clamp, raised to it), x < width, y < height, bits 29-31 clear. decode() says whether any
 * record of the chunk failed; the caller then re-runs that chunk with the numpy code, which
 * finds the first one and raises or warns with the full message. One C loop instead of a dozen numpy passes
 * is what makes the checked read as fast as an unchecked one (benchmarks/events.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static PyObject *decode(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    unsigned int width, height;
    long long run_max;
    int clamp;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*w*IILp", &src, &dst, &width, &height, &run_max, &clamp))
        return NULL;
    Py_ssize_t n = src.len / 8;
    if (src.len % 8 != 0 || dst.len != n * 16) {
        PyBuffer_Release(&src);
        PyBuffer_Release(&dst);
        PyErr_SetString(PyExc_ValueError, "decode: src must hold n 8-byte records, dst n 16-byte rows");
        return NULL;
    }
    const unsigned char *in = (const unsigned char *)src.buf;
    unsigned char *out = (unsigned char *)dst.buf;
    uint32_t fault = 0;
    int64_t rm = (int64_t)run_max;
    Py_BEGIN_ALLOW_THREADS
    /* No early exit: a branch-free body the compiler can pipeline; a fault anywhere in the chunk
     * is reported once at the end (the numpy code then finds and names the first one). */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t t, w;
        memcpy(&t, in + 8 * i, 4);
        memcpy(&w, in + 8 * i + 4, 4);
        uint32_t x = w & 0x3FFFu, y = (w >> 14) & 0x3FFFu, p = w >> 28;
        int64_t tt = (int64_t)t;
        uint32_t back = tt < rm;
        fault |= (back & (uint32_t)!clamp) | (x >= width) | (y >= height) | (p > 1u);
        tt = back ? rm : tt;
        rm = tt;
        uint32_t xy = x | (y << 16);
        memcpy(out + 16 * i, &tt, 8);
        memcpy(out + 16 * i + 8, &xy, 4);
        memcpy(out + 16 * i + 12, &p, 4);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return Py_BuildValue("OL", fault ? Py_True : Py_False, (long long)rm);
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(src, dst, width, height, run_max, clamp) -> (any_fault, run_max)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_datdecode", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__datdecode(void) { return PyModule_Create(&module); }
