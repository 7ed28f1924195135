/* backprop_gpu._cpu: the elementwise hot spots of a training step, fused into single passes
 * over C-contiguous float32 / float64 NumPy arrays (an optional accelerator for the NumPy
 * backend; NumpyOps in backprop_gpu/backend/numpy_backend.py calls it and falls back to the
 * plain xp code of Ops, the reference, otherwise). Arrays it cannot take (another type, dtype, layout or
 * shape) raise TypeError before anything is written, and the caller runs the reference.
 *
 * Every function repeats the reference's arithmetic in the reference's order and dtype (the
 * scalars are cast to the arrays' dtype first, as NumPy does; sums add in NumPy's order: row
 * after row for axis-0 sums, pairwise for a row's sum), and the build turns off FMA
 * contraction, so the results are the reference's bit for bit. exp and log are left to
 * NumPy between two calls (softmax_shift, then np.exp, then softmax_normalize): a C libm's
 * exp rounds differently from NumPy's SIMD one. So training with BACKPROP_GPU_KERNELS=0 and
 * =1 gives the same numbers; tests/test_kernels.py holds each function against the reference
 * and 30 epochs of training against the reference's.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#include <numpy/arrayobject.h>
#include <math.h>
#include <stdint.h>

/* --- argument checks ------------------------------------------------------------------- */

/* `obj` as a C-contiguous, aligned ndarray of `type` (NPY_FLOAT / NPY_DOUBLE / NPY_INT64)
 * holding `size` elements (any size when size < 0), writeable if asked; NULL with a
 * TypeError/ValueError naming the argument otherwise. */
static PyArrayObject *checked(PyObject *obj, const char *name, int type, npy_intp size,
                              int writeable) {
    if (!PyArray_CheckExact(obj)) { /* not a subclass either: np.ma would lose its mask */
        PyErr_Format(PyExc_TypeError, "%s must be a numpy.ndarray, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != type || !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) ||
        !PyArray_ISNOTSWAPPED(a) || (writeable && !PyArray_ISWRITEABLE(a))) {
        PyErr_Format(PyExc_TypeError,
                     "%s must be a C-contiguous, aligned, native-byte-order%s array of %s", name,
                     writeable ? ", writeable" : "",
                     type == NPY_FLOAT ? "float32" : type == NPY_DOUBLE ? "float64" : "int64");
        return NULL;
    }
    if (size >= 0 && PyArray_SIZE(a) != size) { /* a TypeError too: the caller declines */
        PyErr_Format(PyExc_TypeError, "%s must have %zd elements, got %zd", name,
                     (Py_ssize_t)size, (Py_ssize_t)PyArray_SIZE(a));
        return NULL;
    }
    return a;
}

/* The float type of the first array (NPY_FLOAT or NPY_DOUBLE), or -1 with a TypeError. */
static int float_type(PyObject *obj, const char *name) {
    if (PyArray_Check(obj)) {
        int type = PyArray_TYPE((PyArrayObject *)obj);
        if (type == NPY_FLOAT || type == NPY_DOUBLE) return type;
    }
    PyErr_Format(PyExc_TypeError, "%s must be a float32 or float64 numpy.ndarray", name);
    return -1;
}

static int check_nargs(Py_ssize_t nargs, Py_ssize_t want, const char *fn) {
    if (nargs == want) return 0;
    PyErr_Format(PyExc_TypeError, "%s takes %zd arguments, got %zd", fn, want, nargs);
    return -1;
}

/* --- the loops, written once for both float types ------------------------------------ */

#define DEFINE_LOOPS(T, S, SQRT)                                                            \
    static void relu_forward_##S(const T *restrict x, T *restrict out, npy_intp n) {        \
        /* as np.maximum(x, 0): NaN stays NaN, -0.0 becomes +0.0 */                          \
        for (npy_intp i = 0; i < n; i++) out[i] = x[i] > (T)0 || isnan(x[i]) ? x[i] : (T)0; \
    }                                                                                       \
    static void relu_backward_##S(const T *restrict d, const T *restrict x,                 \
                                  T *restrict out, npy_intp n) {                            \
        /* d times the 0/1 mask, as the reference: inf * 0 gives NaN, not 0 */              \
        for (npy_intp i = 0; i < n; i++) out[i] = d[i] * (T)(x[i] > (T)0);                  \
    }                                                                                       \
    /* out[r, j] += b[j]: a Dense layer's biases, added in place to its (n, c) product */   \
    static void add_bias_##S(T *restrict out, const T *restrict b, npy_intp n, npy_intp c) { \
        for (npy_intp r = 0; r < n; r++)                                                    \
            for (npy_intp j = 0; j < c; j++) out[r * c + j] += b[j];                        \
    }                                                                                       \
    /* out[j] = sum over rows of d[r, j], row after row as NumPy's axis-0 sum adds them */  \
    static void column_sums_##S(const T *restrict d, T *restrict out, npy_intp n,          \
                                npy_intp c) {                                               \
        for (npy_intp j = 0; j < c; j++) out[j] = n ? d[j] : (T)0;                          \
        for (npy_intp r = 1; r < n; r++)                                                    \
            for (npy_intp j = 0; j < c; j++) out[j] += d[r * c + j];                        \
    }                                                                                       \
    /* out = z - (its row's maximum), the maximum taken as np.max does (a NaN wins); returns  \
       the number of rows whose argmax (the first largest logit, or the first NaN, as       \
       numpy.argmax) is the true class y[r] */                                              \
    static npy_intp softmax_shift_##S(const T *z, const int64_t *y, T *out, npy_intp n,     \
                                      npy_intp c) {                                         \
        npy_intp correct = 0;                                                               \
        for (npy_intp r = 0; r < n; r++) {                                                  \
            const T *zr = z + r * c;                                                        \
            T top = zr[0];                                                                  \
            npy_intp arg = 0;                                                               \
            for (npy_intp j = 1; j < c && !isnan(top); j++)                                 \
                if (zr[j] > top || isnan(zr[j])) {                                          \
                    top = zr[j];                                                            \
                    arg = j;                                                                \
                }                                                                           \
            correct += arg == y[r];                                                         \
            for (npy_intp j = 0; j < c; j++) out[r * c + j] = zr[j] - top;                  \
        }                                                                                   \
        return correct;                                                                     \
    }                                                                                       \
    /* the sum of a[0..n) in NumPy's pairwise order (np.sum of a contiguous row): fewer     \
       than 8 terms one after another; up to 128 in 8 interleaved partial sums, added as   \
       a tree, then the rest; more, split in two at a multiple of 8 */                      \
    static T pairwise_sum_##S(const T *a, npy_intp n) {                                     \
        if (n < 8) {                                                                        \
            T res = 0;                                                                      \
            for (npy_intp i = 0; i < n; i++) res += a[i];                                   \
            return res;                                                                     \
        }                                                                                   \
        if (n <= 128) {                                                                     \
            T r[8];                                                                         \
            npy_intp i;                                                                     \
            for (int k = 0; k < 8; k++) r[k] = a[k];                                        \
            for (i = 8; i < n - (n % 8); i += 8)                                            \
                for (int k = 0; k < 8; k++) r[k] += a[i + k];                               \
            T res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));      \
            for (; i < n; i++) res += a[i];                                                 \
            return res;                                                                     \
        }                                                                                   \
        npy_intp half = n / 2;                                                              \
        half -= half % 8;                                                                   \
        return pairwise_sum_##S(a, half) + pairwise_sum_##S(a + half, n - half);            \
    }                                                                                       \
    /* e holds exp(z - max) (NumPy's exp ran on it): each row divided by its sum, the       \
       softmax; picked[r] = the true class's probability clipped to [lo, hi], as np.clip */ \
    static void softmax_normalize_##S(T *e, const int64_t *y, T *picked, npy_intp n,        \
                                      npy_intp c, T lo, T hi) {                             \
        for (npy_intp r = 0; r < n; r++) {                                                  \
            T *er = e + r * c;                                                              \
            const T sum = pairwise_sum_##S(er, c);                                          \
            for (npy_intp j = 0; j < c; j++) er[j] /= sum;                                  \
            const T q = er[y[r]];                                                           \
            picked[r] = q < lo ? lo : q > hi ? hi : q; /* NaN stays NaN */                  \
        }                                                                                   \
    }                                                                                       \
    /* (p - onehot(y)) / N */                                                               \
    static void softmax_ce_backward_##S(const T *p, const int64_t *y, T *out, npy_intp n,   \
                                        npy_intp c) {                                       \
        const T count = (T)n;                                                               \
        for (npy_intp r = 0; r < n; r++) {                                                  \
            for (npy_intp j = 0; j < c; j++) out[r * c + j] = p[r * c + j] / count;         \
            out[r * c + y[r]] = (p[r * c + y[r]] - (T)1) / count;                           \
        }                                                                                   \
    }                                                                                       \
    /* v = momentum * v - lr * g; w += v (nesterov: w += momentum * v - lr * g) */          \
    static void sgd_momentum_##S(T *restrict w, T *restrict v, const T *restrict g, T lr,   \
                                 T mom, int nesterov, npy_intp n) {                         \
        for (npy_intp i = 0; i < n; i++) {                                                  \
            T vi = v[i] * mom - lr * g[i];                                                  \
            v[i] = vi;                                                                      \
            w[i] += nesterov ? mom * vi - lr * g[i] : vi;                                   \
        }                                                                                   \
    }                                                                                       \
    static void sgd_##S(T *restrict w, const T *restrict g, T lr, npy_intp n) {             \
        for (npy_intp i = 0; i < n; i++) w[i] -= lr * g[i];                                 \
    }                                                                                       \
    /* m = b1 m + (1 - b1) g; c = b2 c + (1 - b2) g^2;                                      \
       w -= lr * (m / (1 - b1^t)) / (sqrt(c / (1 - b2^t)) + eps) */                         \
    static void adam_##S(T *restrict w, T *restrict m, T *restrict c, const T *restrict g,  \
                         T lr, T b1, T one_b1, T b2, T one_b2, T fix1, T fix2, T eps,       \
                         npy_intp n) {                                                      \
        for (npy_intp i = 0; i < n; i++) {                                                  \
            T mi = m[i] * b1 + one_b1 * g[i];                                               \
            T ci = c[i] * b2 + one_b2 * (g[i] * g[i]);                                      \
            m[i] = mi;                                                                      \
            c[i] = ci;                                                                      \
            w[i] -= lr * (mi / fix1) / (SQRT(ci / fix2) + eps);                             \
        }                                                                                   \
    }

DEFINE_LOOPS(float, f32, sqrtf)
DEFINE_LOOPS(double, f64, sqrt)

/* --- the Python functions ------------------------------------------------------------ */

#define DATA(a, T) ((T *)PyArray_DATA(a))

/* The loops below touch no Python object: a long one runs without the GIL, so other Python
 * threads go on meanwhile (as NumPy's own loops allow). */
#define LOOP(count, ...)                                                                      \
    do {                                                                                      \
        if ((count) >= 16384) {                                                               \
            Py_BEGIN_ALLOW_THREADS __VA_ARGS__;                                                \
            Py_END_ALLOW_THREADS                                                              \
        } else {                                                                              \
            __VA_ARGS__;                                                                      \
        }                                                                                     \
    } while (0)


/* Whether no element of a float32 / float64 array is NaN or infinite: those are the values
 * whose exponent bits are all ones. An OR over integer compares, which the compiler
 * vectorises (no early exit: a NaN is rare, and the scan is memory-bound anyway). */
static int all_finite_f32(const uint32_t *u, npy_intp n) {
    uint32_t bad = 0;
    for (npy_intp i = 0; i < n; i++) bad |= (u[i] & 0x7f800000u) == 0x7f800000u;
    return !bad;
}

static int all_finite_f64(const uint64_t *u, npy_intp n) {
    uint64_t bad = 0;
    for (npy_intp i = 0; i < n; i++)
        bad |= (u[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
    return !bad;
}

/* all_finite(arrays) -> bool: every array of the sequence holds no NaN or Inf. Each must be
 * a C-contiguous float32 or float64 ndarray (TypeError otherwise, before any is read). */
static PyObject *all_finite(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_nargs(nargs, 1, "all_finite") < 0) return NULL;
    /* a tuple of its own (holding every array): a list could be changed by another thread
     * while the scan below runs without the GIL */
    if (!PySequence_Check(args[0]) || PyArray_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "all_finite takes a sequence of arrays");
        return NULL;
    }
    PyObject *seq = PySequence_Tuple(args[0]);
    if (!seq) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(seq);
    PyObject **items = &PyTuple_GET_ITEM(seq, 0);
    npy_intp total = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        int t = float_type(items[k], "arrays[k]");
        if (t < 0 || !checked(items[k], "arrays[k]", t, -1, 0)) {
            Py_DECREF(seq);
            return NULL;
        }
        total += PyArray_SIZE((PyArrayObject *)items[k]);
    }
    int finite = 1;
    LOOP(total, {
        for (Py_ssize_t k = 0; k < count && finite; k++) {
            PyArrayObject *a = (PyArrayObject *)items[k];
            finite = PyArray_TYPE(a) == NPY_FLOAT
                         ? all_finite_f32(DATA(a, uint32_t), PyArray_SIZE(a))
                         : all_finite_f64(DATA(a, uint64_t), PyArray_SIZE(a));
        }
    });
    Py_DECREF(seq);
    return PyBool_FromLong(finite);
}

static PyObject *relu_forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_nargs(nargs, 2, "relu_forward") < 0) return NULL;
    int t = float_type(args[0], "x");
    if (t < 0) return NULL;
    PyArrayObject *x = checked(args[0], "x", t, -1, 0);
    if (!x) return NULL;
    npy_intp n = PyArray_SIZE(x);
    PyArrayObject *out = checked(args[1], "out", t, n, 1);
    if (!out) return NULL;
    LOOP(n, {
        if (t == NPY_FLOAT) relu_forward_f32(DATA(x, float), DATA(out, float), n);
        else relu_forward_f64(DATA(x, double), DATA(out, double), n);
    });
    Py_RETURN_NONE;
}

static PyObject *relu_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_nargs(nargs, 3, "relu_backward") < 0) return NULL;
    int t = float_type(args[0], "dvalues");
    if (t < 0) return NULL;
    PyArrayObject *d = checked(args[0], "dvalues", t, -1, 0);
    if (!d) return NULL;
    npy_intp n = PyArray_SIZE(d);
    PyArrayObject *x = checked(args[1], "inputs", t, n, 0);
    PyArrayObject *out = x ? checked(args[2], "out", t, n, 1) : NULL;
    if (!out) return NULL;
    LOOP(n, {
        if (t == NPY_FLOAT) relu_backward_f32(DATA(d, float), DATA(x, float), DATA(out, float), n);
        else relu_backward_f64(DATA(d, double), DATA(x, double), DATA(out, double), n);
    });
    Py_RETURN_NONE;
}

/* A 2-D (n, c) array argument, its shape in *n, *c. */
static PyArrayObject *matrix(PyObject *obj, const char *name, int t, int writeable, npy_intp *n,
                             npy_intp *c) {
    PyArrayObject *a = checked(obj, name, t, -1, writeable);
    if (a && PyArray_NDIM(a) != 2) {
        PyErr_Format(PyExc_TypeError, "%s must be 2-D, got %d-D", name, PyArray_NDIM(a));
        return NULL;
    }
    if (a) {
        *n = PyArray_DIM(a, 0);
        *c = PyArray_DIM(a, 1);
    }
    return a;
}

static PyObject *add_bias(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* (out (n, c), biases (c elements)): out += biases, row by row */
    if (check_nargs(nargs, 2, "add_bias") < 0) return NULL;
    int t = float_type(args[0], "out");
    npy_intp n, c;
    PyArrayObject *out = t < 0 ? NULL : matrix(args[0], "out", t, 1, &n, &c);
    PyArrayObject *b = out ? checked(args[1], "biases", t, c, 0) : NULL;
    if (!b) return NULL;
    LOOP(n * c, {
        if (t == NPY_FLOAT) add_bias_f32(DATA(out, float), DATA(b, float), n, c);
        else add_bias_f64(DATA(out, double), DATA(b, double), n, c);
    });
    Py_RETURN_NONE;
}

static PyObject *column_sums(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* (d (n, c), out (c elements)): out = d.sum(axis=0) */
    if (check_nargs(nargs, 2, "column_sums") < 0) return NULL;
    int t = float_type(args[0], "d");
    npy_intp n, c;
    PyArrayObject *d = t < 0 ? NULL : matrix(args[0], "d", t, 0, &n, &c);
    PyArrayObject *out = d ? checked(args[1], "out", t, c, 1) : NULL;
    if (!out) return NULL;
    LOOP(n * c, {
        if (t == NPY_FLOAT) column_sums_f32(DATA(d, float), DATA(out, float), n, c);
        else column_sums_f64(DATA(d, double), DATA(out, double), n, c);
    });
    Py_RETURN_NONE;
}

/* Python floats args[first:first + count] into doubles; -1 with the error set otherwise. */
static int doubles(PyObject *const *args, Py_ssize_t first, Py_ssize_t count, double *out) {
    for (Py_ssize_t i = 0; i < count; i++) {
        out[i] = PyFloat_AsDouble(args[first + i]);
        if (out[i] == -1.0 && PyErr_Occurred()) return -1;
    }
    return 0;
}

/* (n, c) logits and n labels; the labels must lie in [0, c) (checked here too: an index
 * outside would read out of bounds). */
static int rows_and_labels(PyObject *const *args, int t, PyArrayObject **z, PyArrayObject **y,
                           npy_intp *n, npy_intp *c) {
    if (!(*z = checked(args[0], "logits", t, -1, 0))) return -1;
    if (PyArray_NDIM(*z) != 2) {
        PyErr_SetString(PyExc_TypeError, "logits must be 2-D (batch, classes)");
        return -1;
    }
    *n = PyArray_DIM(*z, 0);
    *c = PyArray_DIM(*z, 1);
    if (!(*y = checked(args[1], "y_true", NPY_INT64, -1, 0))) return -1;
    if (PyArray_NDIM(*y) != 1 || PyArray_DIM(*y, 0) != *n) { /* e.g. one-hot rows */
        PyErr_Format(PyExc_TypeError, "y_true must be %zd class indices, shape (%zd,)",
                     (Py_ssize_t)*n, (Py_ssize_t)*n);
        return -1;
    }
    const int64_t *labels = DATA(*y, int64_t);
    for (npy_intp r = 0; r < *n; r++) {
        if (labels[r] < 0 || labels[r] >= *c) {
            PyErr_Format(PyExc_ValueError, "y_true[%zd] = %lld is not a class index in [0, %zd)",
                         (Py_ssize_t)r, (long long)labels[r], (Py_ssize_t)*c);
            return -1;
        }
    }
    return 0;
}

static PyObject *softmax_shift(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_nargs(nargs, 3, "softmax_shift") < 0) return NULL;
    int t = float_type(args[0], "logits");
    PyArrayObject *z, *y, *out;
    npy_intp n, c, correct;
    if (t < 0 || rows_and_labels(args, t, &z, &y, &n, &c) < 0) return NULL;
    if (!(out = checked(args[2], "out", t, n * c, 1))) return NULL;
    LOOP(n * c, {
        if (t == NPY_FLOAT)
            correct = softmax_shift_f32(DATA(z, float), DATA(y, int64_t), DATA(out, float), n, c);
        else
            correct = softmax_shift_f64(DATA(z, double), DATA(y, int64_t), DATA(out, double), n,
                                        c);
    });
    return PyLong_FromSsize_t((Py_ssize_t)correct);
}

static PyObject *softmax_normalize(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_nargs(nargs, 5, "softmax_normalize") < 0) return NULL;
    int t = float_type(args[0], "exp");
    PyArrayObject *e, *y, *picked;
    npy_intp n, c;
    if (t < 0 || rows_and_labels(args, t, &e, &y, &n, &c) < 0) return NULL;
    if (!PyArray_ISWRITEABLE(e)) {
        PyErr_SetString(PyExc_TypeError, "exp must be writeable (it is normalised in place)");
        return NULL;
    }
    if (!(picked = checked(args[2], "picked", t, n, 1))) return NULL;
    double bounds[2];
    if (doubles(args, 3, 2, bounds) < 0) return NULL;
    LOOP(n * c, {
        if (t == NPY_FLOAT)
            softmax_normalize_f32(DATA(e, float), DATA(y, int64_t), DATA(picked, float), n, c,
                                  (float)bounds[0], (float)bounds[1]);
        else
            softmax_normalize_f64(DATA(e, double), DATA(y, int64_t), DATA(picked, double), n, c,
                                  bounds[0], bounds[1]);
    });
    Py_RETURN_NONE;
}

static PyObject *softmax_ce_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (check_nargs(nargs, 3, "softmax_ce_backward") < 0) return NULL;
    int t = float_type(args[0], "probabilities");
    PyArrayObject *p, *y, *out;
    npy_intp n, c;
    if (t < 0 || rows_and_labels(args, t, &p, &y, &n, &c) < 0) return NULL;
    if (!(out = checked(args[2], "out", t, n * c, 1))) return NULL;
    LOOP(n * c, {
        if (t == NPY_FLOAT)
            softmax_ce_backward_f32(DATA(p, float), DATA(y, int64_t), DATA(out, float), n, c);
        else
            softmax_ce_backward_f64(DATA(p, double), DATA(y, int64_t), DATA(out, double), n, c);
    });
    Py_RETURN_NONE;
}


static PyObject *sgd_momentum(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* (weights, velocity, grad, lr, momentum, nesterov) */
    if (check_nargs(nargs, 6, "sgd_momentum") < 0) return NULL;
    int t = float_type(args[0], "param");
    if (t < 0) return NULL;
    PyArrayObject *w = checked(args[0], "param", t, -1, 1);
    if (!w) return NULL;
    npy_intp n = PyArray_SIZE(w);
    PyArrayObject *v = checked(args[1], "velocity", t, n, 1);
    PyArrayObject *g = v ? checked(args[2], "grad", t, n, 0) : NULL;
    double s[2];
    if (!g || doubles(args, 3, 2, s) < 0) return NULL;
    int nesterov = PyObject_IsTrue(args[5]);
    if (nesterov < 0) return NULL;
    LOOP(n, {
        if (t == NPY_FLOAT)
            sgd_momentum_f32(DATA(w, float), DATA(v, float), DATA(g, float), (float)s[0],
                             (float)s[1], nesterov, n);
        else
            sgd_momentum_f64(DATA(w, double), DATA(v, double), DATA(g, double), s[0], s[1],
                             nesterov, n);
    });
    Py_RETURN_NONE;
}

static PyObject *sgd(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* (weights, grad, lr) */
    if (check_nargs(nargs, 3, "sgd") < 0) return NULL;
    int t = float_type(args[0], "param");
    if (t < 0) return NULL;
    PyArrayObject *w = checked(args[0], "param", t, -1, 1);
    if (!w) return NULL;
    npy_intp n = PyArray_SIZE(w);
    PyArrayObject *g = checked(args[1], "grad", t, n, 0);
    double lr;
    if (!g || doubles(args, 2, 1, &lr) < 0) return NULL;
    LOOP(n, {
        if (t == NPY_FLOAT) sgd_f32(DATA(w, float), DATA(g, float), (float)lr, n);
        else sgd_f64(DATA(w, double), DATA(g, double), lr, n);
    });
    Py_RETURN_NONE;
}

static PyObject *adam(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* (weights, momentums, cache, grad, lr, beta_1, 1 - beta_1, beta_2, 1 - beta_2,
        1 - beta_1**t, 1 - beta_2**t, epsilon): the scalars as the reference computes them */
    if (check_nargs(nargs, 12, "adam") < 0) return NULL;
    int t = float_type(args[0], "param");
    if (t < 0) return NULL;
    PyArrayObject *w = checked(args[0], "param", t, -1, 1);
    if (!w) return NULL;
    npy_intp n = PyArray_SIZE(w);
    PyArrayObject *m = checked(args[1], "momentums", t, n, 1);
    PyArrayObject *c = m ? checked(args[2], "cache", t, n, 1) : NULL;
    PyArrayObject *g = c ? checked(args[3], "grad", t, n, 0) : NULL;
    double s[8];
    if (!g || doubles(args, 4, 8, s) < 0) return NULL;
    LOOP(n, {
        if (t == NPY_FLOAT)
            adam_f32(DATA(w, float), DATA(m, float), DATA(c, float), DATA(g, float), (float)s[0],
                     (float)s[1], (float)s[2], (float)s[3], (float)s[4], (float)s[5], (float)s[6],
                     (float)s[7], n);
        else
            adam_f64(DATA(w, double), DATA(m, double), DATA(c, double), DATA(g, double), s[0], s[1],
                     s[2], s[3], s[4], s[5], s[6], s[7], n);
    });
    Py_RETURN_NONE;
}

/* =============================================================================== * Model.train's fused Dense + ReLU passes: bias_relu and relu_backward_bias_gradient.
 * (Their own section: each repeats the two reference ops it fuses, in their order.)
 * ====================================================================================== */

#define DEFINE_FUSED_RELU(T, S)                                                             \
    /* z[r, j] = max(z[r, j] + b[j], 0) in place: add_bias then relu_forward, one pass */  \
    static void bias_relu_##S(T *restrict z, const T *restrict b, npy_intp n, npy_intp c) { \
        for (npy_intp r = 0; r < n; r++) {                                                  \
            T *zr = z + r * c;                                                              \
            for (npy_intp j = 0; j < c; j++) {                                              \
                const T v = zr[j] + b[j];                                                   \
                zr[j] = v > (T)0 || isnan(v) ? v : (T)0;                                    \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
    /* out = d * (y > 0) (relu_backward, the mask from the ReLU's output y), and sums[j] =  \
       the column sums of out added row after row, as column_sums (NumPy's axis-0 order    \
       for c > 1): row 0 starts the sums, each later row is added as it is computed */     \
    static void relu_backward_bias_gradient_##S(const T *restrict d, const T *restrict y,  \
                                                T *restrict out, T *restrict sums,         \
                                                npy_intp n, npy_intp c) {                  \
        if (n == 0) {                                                                       \
            for (npy_intp j = 0; j < c; j++) sums[j] = (T)0;                                \
            return;                                                                         \
        }                                                                                   \
        for (npy_intp j = 0; j < c; j++) sums[j] = out[j] = d[j] * (T)(y[j] > (T)0);        \
        for (npy_intp r = 1; r < n; r++) {                                                  \
            const T *dr = d + r * c, *yr = y + r * c;                                       \
            T *outr = out + r * c;                                                          \
            for (npy_intp j = 0; j < c; j++) {                                              \
                const T g = dr[j] * (T)(yr[j] > (T)0);                                      \
                outr[j] = g;                                                                \
                sums[j] += g;                                                               \
            }                                                                               \
        }                                                                                   \
    }

DEFINE_FUSED_RELU(float, f32)
DEFINE_FUSED_RELU(double, f64)

static PyObject *bias_relu(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* (z (n, c), biases (c elements)): z = max(z + biases, 0) in place */
    if (check_nargs(nargs, 2, "bias_relu") < 0) return NULL;
    int t = float_type(args[0], "z");
    npy_intp n, c;
    PyArrayObject *z = t < 0 ? NULL : matrix(args[0], "z", t, 1, &n, &c);
    PyArrayObject *b = z ? checked(args[1], "biases", t, c, 0) : NULL;
    if (!b) return NULL;
    LOOP(n * c, {
        if (t == NPY_FLOAT) bias_relu_f32(DATA(z, float), DATA(b, float), n, c);
        else bias_relu_f64(DATA(z, double), DATA(b, double), n, c);
    });
    Py_RETURN_NONE;
}

static PyObject *relu_backward_bias_gradient(PyObject *self, PyObject *const *args,
                                             Py_ssize_t nargs) {
    /* (dvalues (n, c), output (n, c), out (n, c), sums (c elements)), c > 1 */
    if (check_nargs(nargs, 4, "relu_backward_bias_gradient") < 0) return NULL;
    int t = float_type(args[0], "dvalues");
    npy_intp n, c;
    PyArrayObject *d = t < 0 ? NULL : matrix(args[0], "dvalues", t, 0, &n, &c);
    if (!d) return NULL;
    if (c == 1) { /* NumPy sums one contiguous column pairwise: the caller runs the reference */
        PyErr_SetString(PyExc_TypeError, "dvalues must have more than one column");
        return NULL;
    }
    PyArrayObject *y = checked(args[1], "output", t, n * c, 0);
    PyArrayObject *out = y ? checked(args[2], "out", t, n * c, 1) : NULL;
    PyArrayObject *sums = out ? checked(args[3], "sums", t, c, 1) : NULL;
    if (!sums) return NULL;
    if (PyArray_DATA(out) == PyArray_DATA(d) || PyArray_DATA(out) == PyArray_DATA(y) ||
        PyArray_DATA(sums) == PyArray_DATA(out)) { /* the loop's pointers are restrict */
        PyErr_SetString(PyExc_TypeError, "out and sums must not share memory with the inputs");
        return NULL;
    }
    LOOP(n * c, {
        if (t == NPY_FLOAT)
            relu_backward_bias_gradient_f32(DATA(d, float), DATA(y, float), DATA(out, float),
                                            DATA(sums, float), n, c);
        else
            relu_backward_bias_gradient_f64(DATA(d, double), DATA(y, double), DATA(out, double),
                                            DATA(sums, double), n, c);
    });
    Py_RETURN_NONE;
}

/* ====================================== end of the fused Dense + ReLU section ========= */

/* --- Philox4x32-10: Dropout's uniforms (as backprop_gpu.philox.uniform_reference) ----- */

/* Philox4x32-10 (Random123) of counter (c0, c1, c2, c3) under key (k0, k1), into out[0..3]. */
static inline void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                 uint32_t k0, uint32_t k1, uint32_t out[4]) {
    for (int r = 0; r < 10; r++) {
        if (r) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        const uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

/* Word w of the (key, stream) sequence is output w % 4 of the block with counter
 * (w / 4 low 32 bits, high 32 bits, s0, s1). float32 element i: (word i >> 8) * 2^-24;
 * float64 element i: ((word 2i >> 5) * 2^26 + (word 2i+1 >> 6)) * 2^-53. out[i] gets element
 * start + i: a partial block first, then whole blocks (which the compiler can vectorise). */
static void philox_f32(float *restrict out, npy_intp n, uint64_t start, uint32_t k0,
                       uint32_t k1, uint32_t s0, uint32_t s1) {
    uint32_t w[4];
    npy_intp i = 0;
    uint64_t b = start >> 2;
    for (unsigned j = (unsigned)(start & 3); j && i < n; b++, j = 0) { /* the partial head */
        philox4x32_10((uint32_t)b, (uint32_t)(b >> 32), s0, s1, k0, k1, w);
        for (; j < 4 && i < n; j++) out[i++] = (float)(w[j] >> 8) * 0x1p-24f;
    }
    for (; i + 4 <= n; i += 4, b++) {
        philox4x32_10((uint32_t)b, (uint32_t)(b >> 32), s0, s1, k0, k1, w);
        for (int j = 0; j < 4; j++) out[i + j] = (float)(w[j] >> 8) * 0x1p-24f;
    }
    if (i < n) { /* the partial tail */
        philox4x32_10((uint32_t)b, (uint32_t)(b >> 32), s0, s1, k0, k1, w);
        for (int j = 0; i < n; j++) out[i++] = (float)(w[j] >> 8) * 0x1p-24f;
    }
}

static inline double philox_double(uint32_t hi, uint32_t lo) {
    return (double)(((uint64_t)(hi >> 5) << 26) | (lo >> 6)) * 0x1p-53;
}

static void philox_f64(double *restrict out, npy_intp n, uint64_t start, uint32_t k0,
                       uint32_t k1, uint32_t s0, uint32_t s1) {
    uint32_t w[4];
    npy_intp i = 0;
    uint64_t b = start >> 1;
    if ((start & 1) && n) { /* the partial head: the block's second element */
        philox4x32_10((uint32_t)b, (uint32_t)(b >> 32), s0, s1, k0, k1, w);
        out[i++] = philox_double(w[2], w[3]);
        b++;
    }
    for (; i + 2 <= n; i += 2, b++) {
        philox4x32_10((uint32_t)b, (uint32_t)(b >> 32), s0, s1, k0, k1, w);
        out[i] = philox_double(w[0], w[1]);
        out[i + 1] = philox_double(w[2], w[3]);
    }
    if (i < n) {
        philox4x32_10((uint32_t)b, (uint32_t)(b >> 32), s0, s1, k0, k1, w);
        out[i] = philox_double(w[0], w[1]);
    }
}

/* Python ints args[first:first + count] as unsigned values below 2^bits; -1 with the error
 * set otherwise. */
static int words(PyObject *const *args, Py_ssize_t first, Py_ssize_t count, int bits,
                 const char *const *names, uint64_t *out) {
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyLong_Check(args[first + i])) {
            PyErr_Format(PyExc_TypeError, "%s must be an int", names[i]);
            return -1;
        }
        out[i] = PyLong_AsUnsignedLongLong(args[first + i]);
        if (PyErr_Occurred() || (bits < 64 && out[i] >> bits)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "%s must be an int in [0, 2**%d)", names[i], bits);
            return -1;
        }
    }
    return 0;
}

static PyObject *philox_uniform(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    /* (out, seed, stream0, stream1, start): out.flat[i] = element start + i */
    if (check_nargs(nargs, 5, "philox_uniform") < 0) return NULL;
    int t = float_type(args[0], "out");
    PyArrayObject *out = t < 0 ? NULL : checked(args[0], "out", t, -1, 1);
    static const char *const seed_name[] = {"seed"}, *const names[] = {"stream0", "stream1"},
                             *const start_name[] = {"start"};
    uint64_t seed, stream[2], start;
    if (!out || words(args, 1, 1, 64, seed_name, &seed) < 0 ||
        words(args, 2, 2, 32, names, stream) < 0 || words(args, 4, 1, 64, start_name, &start) < 0)
        return NULL;
    npy_intp n = PyArray_SIZE(out);
    const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    LOOP(n, {
        if (t == NPY_FLOAT)
            philox_f32(DATA(out, float), n, start, k0, k1, (uint32_t)stream[0],
                       (uint32_t)stream[1]);
        else
            philox_f64(DATA(out, double), n, start, k0, k1, (uint32_t)stream[0],
                       (uint32_t)stream[1]);
    });
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"all_finite", (PyCFunction)(void (*)(void))all_finite, METH_FASTCALL,
     "all_finite(arrays) -> bool: no NaN or Inf in any of the float arrays"},
    {"relu_forward", (PyCFunction)(void (*)(void))relu_forward, METH_FASTCALL,
     "relu_forward(x, out): out = max(x, 0)"},
    {"relu_backward", (PyCFunction)(void (*)(void))relu_backward, METH_FASTCALL,
     "relu_backward(dvalues, inputs, out): out = dvalues * (inputs > 0)"},
    {"add_bias", (PyCFunction)(void (*)(void))add_bias, METH_FASTCALL,
     "add_bias(out, biases): out += biases (out (n, c), biases c elements)"},
    {"column_sums", (PyCFunction)(void (*)(void))column_sums, METH_FASTCALL,
     "column_sums(d, out): out = d.sum(axis=0) (d (n, c), out c elements)"},
    {"softmax_shift", (PyCFunction)(void (*)(void))softmax_shift, METH_FASTCALL,
     "softmax_shift(logits, y, out) -> correct: out = logits - logits.max(axis=1, keepdims="
     "True), correct = count(argmax(logits[i]) == y[i])"},
    {"softmax_normalize", (PyCFunction)(void (*)(void))softmax_normalize, METH_FASTCALL,
     "softmax_normalize(exp, y, picked, lo, hi): exp /= exp.sum(axis=1, keepdims=True) (NumPy's "
     "pairwise order), picked[i] = clip(exp[i, y[i]], lo, hi)"},
    {"softmax_ce_backward", (PyCFunction)(void (*)(void))softmax_ce_backward, METH_FASTCALL,
     "softmax_ce_backward(probabilities, y, out): out = (probabilities - onehot(y)) / N"},
    {"sgd_momentum", (PyCFunction)(void (*)(void))sgd_momentum, METH_FASTCALL,
     "sgd_momentum(param, velocity, grad, lr, momentum, nesterov): in place"},
    {"sgd", (PyCFunction)(void (*)(void))sgd, METH_FASTCALL, "sgd(param, grad, lr): in place"},
    {"philox_uniform", (PyCFunction)(void (*)(void))philox_uniform, METH_FASTCALL,
     "philox_uniform(out, seed, stream0, stream1, start): out.flat[i] = Philox4x32-10 uniform "
     "start + i of (seed, (stream0, stream1)) (see backprop_gpu.philox)"},
    {"adam", (PyCFunction)(void (*)(void))adam, METH_FASTCALL,
     "adam(param, momentums, cache, grad, lr, b1, 1 - b1, b2, 1 - b2, 1 - b1**t, 1 - b2**t, "
     "eps): in place"},
    /* the fused Dense + ReLU section */
    {"bias_relu", (PyCFunction)(void (*)(void))bias_relu, METH_FASTCALL,
     "bias_relu(z, biases): z = max(z + biases, 0) in place (z (n, c), biases c elements)"},
    {"relu_backward_bias_gradient", (PyCFunction)(void (*)(void))relu_backward_bias_gradient,
     METH_FASTCALL,
     "relu_backward_bias_gradient(dvalues, output, out, sums): out = dvalues * (output > 0), "
     "sums = out.sum(axis=0) (row after row; more than one column)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_cpu",
    "Fused single-pass loops for the NumPy backend (see backprop_gpu/backend/numpy_backend.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__cpu(void) {
    import_array();
    return PyModule_Create(&module);
}
