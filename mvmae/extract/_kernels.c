/* Compiled inner loops of extraction: per-frame work over ~10^3 blocks.
 *
 * Built with the package (setup.py), so nothing is compiled at run time and importing costs
 * microseconds. Arrays arrive through the buffer protocol; mvmae/extract/kernels.py checks their
 * dtypes and shapes, allocates the outputs and documents each function. The arithmetic follows
 * the numba kernels these replace operation for operation (float32 where they used float32,
 * double where numba promoted int + float32 to float64), so the output is the same bits.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* FFmpeg's AVMotionVector (libavutil/motion_vector.h), the records PyAV's to_ndarray() exposes. */
typedef struct {
    int32_t source;
    uint8_t w, h;
    int16_t src_x, src_y, dst_x, dst_y;
    uint64_t flags;
    int32_t motion_x, motion_y;
    uint16_t motion_scale;
} MotionVector;

/* Sum of absolute differences below which a candidate is taken without trying farther ones. */
#define EARLY_EXIT_SAD 16

typedef struct {
    const uint8_t *data;
    Py_ssize_t height, width, row_stride;
} Luma;

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, const char *name) {
    int flags = writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS;
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous%s array", name,
                     writable ? " writable" : "");
        return -1;
    }
    return 0;
}

static int get_luma(PyObject *obj, Py_buffer *view, Luma *luma) {
    if (PyObject_GetBuffer(obj, view, PyBUF_STRIDES) < 0) return -1;
    if (view->ndim != 2 || view->itemsize != 1 || view->strides[1] != 1 || view->strides[0] < 1) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "luma: expected a uint8 (H, W) array with contiguous rows");
        return -1;
    }
    luma->data = (const uint8_t *)view->buf;
    luma->height = view->shape[0];
    luma->width = view->shape[1];
    luma->row_stride = view->strides[0];
    return 0;
}

/* A negative index counts once from the end, as numpy (and the numba kernels) index; one still
 * outside the picture (a block reaching more than a picture's size beyond its left or top edge,
 * which no decoder exports) reads the first row or column instead of memory it does not own. */
static inline Py_ssize_t wrap(Py_ssize_t i, Py_ssize_t n) { return i >= 0 ? i : (i + n >= 0 ? i + n : 0); }

static inline Py_ssize_t clamp(Py_ssize_t v, Py_ssize_t lo, Py_ssize_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

/* The 4x4 lattice of a block (1/8, 3/8, 5/8, 7/8 of its edges), clamped to the picture's last
 * row and column: px, py as displaced into a reference; the block's own samples, where a
 * negative coordinate counts from the end (as numpy indexes), as the rows and columns of ``cur``
 * they read (computed once per block, not once per candidate). */
typedef struct {
    Py_ssize_t px[4], py[4];
    const uint8_t *cur_row[4];
    Py_ssize_t cur_col[4];
} Lattice;

static inline void lattice(Lattice *l, const Luma *cur, int32_t x0, int32_t y0, int32_t bw, int32_t bh) {
    for (int a = 0; a < 4; a++) {
        Py_ssize_t py = y0 + (Py_ssize_t)((bh * (2 * a + 1)) / 8);
        Py_ssize_t px = x0 + (Py_ssize_t)((bw * (2 * a + 1)) / 8);
        l->py[a] = py > cur->height - 1 ? cur->height - 1 : py;
        l->px[a] = px > cur->width - 1 ? cur->width - 1 : px;
        l->cur_row[a] = cur->data + wrap(l->py[a], cur->height) * cur->row_stride;
        l->cur_col[a] = wrap(l->px[a], cur->width);
    }
}

/* SAD over the lattice between the block in cur and ref displaced by (mx, my) px, rounded to the
 * nearest pixel and clamped to the picture. floor(p + m + 0.5) == p + floor(m + 0.5) for an
 * integer p: the rounding is done once per displacement, not per sample. The sum stops (returning
 * a value >= limit) as soon as it reaches ``limit``, the best SAD so far: only a strictly smaller
 * SAD replaces the best, so the samples left cannot change the choice. */
static int64_t sad(const Luma *cur, const Luma *ref, const Lattice *l, float mx, float my, int64_t limit) {
    Py_ssize_t hgt = cur->height, wid = cur->width;
    Py_ssize_t dx = (Py_ssize_t)floor((double)mx + 0.5), dy = (Py_ssize_t)floor((double)my + 0.5);
    Py_ssize_t rx[4];
    for (int b = 0; b < 4; b++) rx[b] = clamp(l->px[b] + dx, 0, wid - 1);
    int64_t total = 0;
    for (int a = 0; a < 4; a++) {
        const uint8_t *rrow = ref->data + clamp(l->py[a] + dy, 0, hgt - 1) * ref->row_stride;
        for (int b = 0; b < 4; b++) {
            int32_t diff = (int32_t)l->cur_row[a][l->cur_col[b]] - (int32_t)rrow[rx[b]];
            total += diff < 0 ? -diff : diff;
            if (total >= limit) return total; /* it cannot beat the best so far */
        }
    }
    return total;
}

/* unpack_side_data(mvs, x0, y0, bw, bh, motion, direction): fill the int32 (N,) and float32 (2, N)
 * outputs from N AVMotionVector records. */
static PyObject *unpack_side_data(PyObject *self, PyObject *args) {
    PyObject *objs[7];
    Py_buffer v[7];
    const char *names[7] = {"mvs", "x0", "y0", "bw", "bh", "motion", "direction"};
    if (!PyArg_ParseTuple(args, "OOOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4],
                          &objs[5], &objs[6]))
        return NULL;
    int got = 0;
    for (; got < 7; got++)
        if (get_buffer(objs[got], &v[got], got > 0, names[got]) < 0) goto fail;
    Py_ssize_t n = v[0].len / (Py_ssize_t)sizeof(MotionVector);
    if (v[0].len != n * (Py_ssize_t)sizeof(MotionVector) || v[5].len != 2 * n * 4 || v[6].len != n * 4
        || v[1].len != n * 4 || v[2].len != n * 4 || v[3].len != n * 4 || v[4].len != n * 4) {
        PyErr_SetString(PyExc_ValueError, "unpack_side_data: output sizes do not match the records");
        goto fail;
    }
    const MotionVector *mvs = (const MotionVector *)v[0].buf;
    int32_t *x0 = v[1].buf, *y0 = v[2].buf, *bw = v[3].buf, *bh = v[4].buf, *direction = v[6].buf;
    float *motion = v[5].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        const MotionVector *m = &mvs[i];
        int32_t w = m->w, h = m->h;
        bw[i] = w;
        bh[i] = h;
        x0[i] = (int32_t)m->dst_x - w / 2;
        y0[i] = (int32_t)m->dst_y - h / 2;
        float scale = m->motion_scale != 0 ? (float)m->motion_scale : 1.0f;
        motion[i] = (float)m->motion_x / scale;
        motion[n + i] = (float)m->motion_y / scale;
        direction[i] = m->source > 0 ? 1 : -1;
    }
    Py_END_ALLOW_THREADS
    for (int k = 0; k < 7; k++) PyBuffer_Release(&v[k]);
    Py_RETURN_NONE;
fail:
    for (int k = 0; k < got; k++) PyBuffer_Release(&v[k]);
    return NULL;
}

/* resolve_blocks(cur, refs, distances, x0, y0, bw, bh, motion, direction, velocity, resolved):
 * velocity float32 (2, N) and resolved bool (N,) are outputs, zero on entry. */
static PyObject *resolve_blocks(PyObject *self, PyObject *args) {
    PyObject *cur_obj, *refs_obj, *objs[9];
    const char *names[9] = {"distances", "x0", "y0", "bw", "bh", "motion", "direction", "velocity",
                            "resolved"};
    if (!PyArg_ParseTuple(args, "OO!OOOOOOOOO", &cur_obj, &PyTuple_Type, &refs_obj, &objs[0],
                          &objs[1], &objs[2], &objs[3], &objs[4], &objs[5], &objs[6], &objs[7],
                          &objs[8]))
        return NULL;
    Py_ssize_t num_refs = PyTuple_GET_SIZE(refs_obj);
    Py_buffer cur_view, v[9];
    Py_buffer *ref_views = PyMem_Calloc(num_refs ? num_refs : 1, sizeof(Py_buffer));
    Luma *refs = PyMem_Calloc(num_refs ? num_refs : 1, sizeof(Luma));
    Luma cur;
    int got = 0, got_refs = 0, got_cur = 0;
    PyObject *result = NULL;
    if (ref_views == NULL || refs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (get_luma(cur_obj, &cur_view, &cur) < 0) goto done;
    got_cur = 1;
    for (; got_refs < num_refs; got_refs++) {
        if (get_luma(PyTuple_GET_ITEM(refs_obj, got_refs), &ref_views[got_refs], &refs[got_refs]) < 0)
            goto done;
        if (refs[got_refs].height != cur.height || refs[got_refs].width != cur.width) {
            PyBuffer_Release(&ref_views[got_refs]);
            PyErr_SetString(PyExc_ValueError, "resolve_blocks: a reference's size differs from the picture's");
            goto done;
        }
    }
    for (; got < 9; got++)
        if (get_buffer(objs[got], &v[got], got >= 7, names[got]) < 0) goto done;
    Py_ssize_t n = v[1].len / 4;
    if (v[0].len != num_refs * 4 || v[2].len != n * 4 || v[3].len != n * 4 || v[4].len != n * 4
        || v[5].len != 2 * n * 4 || v[6].len != n * 4 || v[7].len != 2 * n * 4 || v[8].len != n) {
        PyErr_SetString(PyExc_ValueError, "resolve_blocks: array sizes do not match");
        goto done;
    }
    const float *distances = v[0].buf, *motion = v[5].buf;
    const int32_t *x0 = v[1].buf, *y0 = v[2].buf, *bw = v[3].buf, *bh = v[4].buf, *direction = v[6].buf;
    float *velocity = v[7].buf;
    uint8_t *resolved = v[8].buf;
    Py_BEGIN_ALLOW_THREADS
    int num_side[2] = {0, 0}; /* candidates in the past (0) and the future (1) */
    for (Py_ssize_t c = 0; c < num_refs; c++) num_side[distances[c] > 0 ? 1 : 0] += 1;
    for (Py_ssize_t i = 0; i < n; i++) {
        int side = direction[i] > 0 ? 1 : 0;
        if (num_side[side] == 0) continue;
        resolved[i] = 1;
        float mx = motion[i], my = motion[n + i];
        if (mx == 0 && my == 0) continue;
        float best_d = 0;
        int64_t best_sad = -1;
        Lattice lat;
        for (Py_ssize_t c = 0; c < num_refs; c++) {
            float d = distances[c];
            if ((d > 0) != (side == 1)) continue;
            if (num_side[side] == 1) {
                best_d = d;
                break;
            }
            if (best_sad < 0) lattice(&lat, &cur, x0[i], y0[i], bw[i], bh[i]); /* the first SAD */
            int64_t s = sad(&cur, &refs[c], &lat, mx, my, best_sad < 0 ? INT64_MAX : best_sad);
            if (best_sad < 0 || s < best_sad) {
                best_d = d;
                best_sad = s;
            }
            if (best_sad <= EARLY_EXIT_SAD) break; /* a near reference already matches */
        }
        velocity[i] = mx / best_d;
        velocity[n + i] = my / best_d;
    }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    for (int k = 0; k < got; k++) PyBuffer_Release(&v[k]);
    for (Py_ssize_t k = 0; k < got_refs; k++) PyBuffer_Release(&ref_views[k]);
    if (got_cur) PyBuffer_Release(&cur_view);
    PyMem_Free(ref_views);
    PyMem_Free(refs);
    return result;
}

/* Each cell's mean from its sums and area; branch-free on arrays that do not overlap, so it
 * vectorises (a cell without area divides 0 by 1). */
static void mean_cells(const float *restrict area, const float *restrict sx, const float *restrict sy,
                       float *restrict mx, float *restrict my, uint8_t *restrict valid, Py_ssize_t cells) {
    for (Py_ssize_t k = 0; k < cells; k++) {
        float div = area[k] > 0 ? area[k] : 1.0f;
        valid[k] = area[k] > 0;
        mx[k] = sx[k] / div;
        my[k] = sy[k] / div;
    }
}

/* rasterize_blocks(x0, y0, bw, bh, velocity, height, width, grid, acc, sums, valid): acc float32
 * (3 * (h * w + 1)), zero on entry, is scratch (area, x sums, y sums of each cell, each followed by
 * a sink cell); outputs sums float32 (2, h, w) (each cell's mean velocity, 0 where no block) and
 * valid bool (h, w). */
static PyObject *rasterize_blocks(PyObject *self, PyObject *args) {
    PyObject *objs[8];
    Py_ssize_t height, width, grid;
    const char *names[8] = {"x0", "y0", "bw", "bh", "velocity", "acc", "sums", "valid"};
    Py_buffer v[8];
    if (!PyArg_ParseTuple(args, "OOOOOnnnOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4],
                          &height, &width, &grid, &objs[5], &objs[6], &objs[7]))
        return NULL;
    if (grid < 1 || (grid & (grid - 1)) != 0 || height < 0 || width < 0) {
        PyErr_SetString(PyExc_ValueError, "rasterize_blocks: the grid must be a power of 2, the size >= 0");
        return NULL;
    }
    int shift = 0; /* cells by shifts: a division by a run-time value costs tens of cycles per block */
    while (((Py_ssize_t)1 << shift) < grid) shift++;
    int got = 0;
    for (; got < 8; got++)
        if (get_buffer(objs[got], &v[got], got >= 5, names[got]) < 0) goto fail;
    Py_ssize_t n = v[0].len / 4, h = (height + grid - 1) / grid, w = (width + grid - 1) / grid;
    if (v[1].len != n * 4 || v[2].len != n * 4 || v[3].len != n * 4 || v[4].len != 2 * n * 4
        || v[5].len != 3 * (h * w + 1) * 4 || v[6].len != 2 * h * w * 4 || v[7].len != h * w) {
        PyErr_SetString(PyExc_ValueError, "rasterize_blocks: array sizes do not match");
        goto fail;
    }
    Py_ssize_t stride = h * w + 1;
    float *acc = v[5].buf;
    const int32_t *x0 = v[0].buf, *y0 = v[1].buf, *bw = v[2].buf, *bh = v[3].buf;
    const float *velocity = v[4].buf;
    float *sums = v[6].buf, *area = acc, *sx = acc + stride, *sy = acc + 2 * stride;
    uint8_t *valid = v[7].buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t ya = y0[i] > 0 ? y0[i] : 0, yb = (Py_ssize_t)y0[i] + bh[i];
        Py_ssize_t xa = x0[i] > 0 ? x0[i] : 0, xb = (Py_ssize_t)x0[i] + bw[i];
        if (yb > height) yb = height;
        if (xb > width) xb = width;
        if (ya >= yb || xa >= xb) continue;
        float vx = velocity[i], vy = velocity[n + i];
        Py_ssize_t cy0 = ya >> shift, cx0 = xa >> shift;
        Py_ssize_t cy_end = ((yb - 1) >> shift) + 1, cx_end = ((xb - 1) >> shift) + 1;
        if (cy_end - cy0 <= 2 && cx_end - cx0 <= 2) {
            /* At most 2x2 cells (every H.264 block at grids 8 and 16): four updates without
             * loops, whose exits, 1 or 2 trips at random, the branch predictor kept missing. A
             * cell the block does not reach is written to the sink instead. */
            Py_ssize_t ymid = (cy0 + 1) << shift, xmid = (cx0 + 1) << shift;
            Py_ssize_t oh0 = (yb < ymid ? yb : ymid) - ya, ow0 = (xb < xmid ? xb : xmid) - xa;
            Py_ssize_t oh1 = yb - ya - oh0, ow1 = xb - xa - ow0;
            Py_ssize_t k00 = cy0 * w + cx0;
            Py_ssize_t ks[4] = {k00, k00 + 1, k00 + w, k00 + w + 1};
            Py_ssize_t as[4] = {oh0 * ow0, oh0 * ow1, oh1 * ow0, oh1 * ow1};
            for (int c = 0; c < 4; c++) {
                Py_ssize_t k = as[c] > 0 ? ks[c] : h * w;
                float a = (float)as[c];
                area[k] += a;
                sx[k] += a * vx;
                sy[k] += a * vy;
            }
            continue;
        }
        for (Py_ssize_t cy = cy0; cy < cy_end; cy++) {
            Py_ssize_t top = (cy << shift) > ya ? (cy << shift) : ya;
            Py_ssize_t bottom = ((cy + 1) << shift) < yb ? ((cy + 1) << shift) : yb;
            Py_ssize_t oh = bottom - top;
            for (Py_ssize_t cx = cx0; cx < cx_end; cx++) {
                Py_ssize_t left = (cx << shift) > xa ? (cx << shift) : xa;
                Py_ssize_t right = ((cx + 1) << shift) < xb ? ((cx + 1) << shift) : xb;
                float a = (float)(oh * (right - left));
                Py_ssize_t k = cy * w + cx;
                area[k] += a;
                sx[k] += a * vx;
                sy[k] += a * vy;
            }
        }
    }
    mean_cells(area, sx, sy, sums, sums + h * w, valid, h * w);
    Py_END_ALLOW_THREADS
    for (int k = 0; k < 8; k++) PyBuffer_Release(&v[k]);
    Py_RETURN_NONE;
fail:
    for (int k = 0; k < got; k++) PyBuffer_Release(&v[k]);
    return NULL;
}

static PyMethodDef methods[] = {
    {"unpack_side_data", unpack_side_data, METH_VARARGS, "See mvmae.extract.kernels.unpack_side_data."},
    {"resolve_blocks", resolve_blocks, METH_VARARGS, "See mvmae.extract.kernels.resolve_blocks."},
    {"rasterize_blocks", rasterize_blocks, METH_VARARGS, "See mvmae.extract.kernels.rasterize_blocks."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_kernels", "Compiled inner loops of extraction (see kernels.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "EARLY_EXIT_SAD", EARLY_EXIT_SAD) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
