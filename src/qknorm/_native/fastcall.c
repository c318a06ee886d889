/* The compiled part of qknorm's fast call (built at first use by qknorm/native.py with the C
 * compiler and Python headers Triton's own launcher is built with; nothing here needs torch's
 * or CUDA's headers).
 *
 * describe(grad, *args) -> (meta: bytes, device: int, ptr0, ptr1, ...) or None
 *   For each argument, None or a torch.Tensor / nn.Parameter (exact types): its dtype, device,
 *   shape and strides packed into `meta` (a None argument adds one marker byte), and its data
 *   pointer (None for a None argument). `device` is the first tensor's CUDA/ROCm index, -1 on
 *   any other device. None when an argument is of another type, cannot be described through
 *   DLPack (sparse, ...), is a negated view (`is_neg()`: DLPack would not say so), or, with
 *   `grad` true (the caller's grad mode), requires grad.
 *   The metadata comes from PyTorch's DLPack C exchange API (`__dlpack_c_exchange_api__`, DLPack
 *   1.x, torch >= 2.10): no Python call per attribute.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "tensor_meta.h"

/* init(torch.Tensor, torch.nn.Parameter, torch.int8, torch.uint8): bind the exchange API; raises
 * when there is none. */
static PyObject* init(PyObject* self, PyObject* args) {
  PyObject *tt, *tp, *i8, *u8;
  if (!PyArg_ParseTuple(args, "OOOO", &tt, &tp, &i8, &u8)) return NULL;
  if (!tm_init(tt, tp, i8, u8)) return NULL;
  Py_RETURN_NONE;
}

static PyObject* describe(PyObject* self, PyObject* const* argv, Py_ssize_t nargs) {
  unsigned char buf[TM_META_MAX];
  if (nargs < 1) {
    PyErr_SetString(PyExc_TypeError, "describe(grad, *tensors)");
    return NULL;
  }
  int grad = PyObject_IsTrue(argv[0]);
  if (grad < 0) return NULL;
  PyObject* const* args = argv + 1;
  Py_ssize_t n = nargs - 1;
  size_t pos = 0;
  long device = -2; /* not yet seen */
  if (!tm_from_py) {
    PyErr_SetString(PyExc_RuntimeError, "qknorm native: init() not called");
    return NULL;
  }
  PyObject* out = PyTuple_New(n + 2);
  if (!out) return NULL;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* a = args[i];
    if (a == Py_None) {
      if (pos + 1 > TM_META_MAX) goto none;
      buf[pos++] = 0xff;
      Py_INCREF(Py_None);
      PyTuple_SET_ITEM(out, i + 2, Py_None);
      continue;
    }
    DLTensor t; /* its shape and strides are valid until control returns to Python: copied below */
    if (!tm_read(a, &t, grad)) goto none;
    pos = tm_pack(buf, pos, &t);
    if (!pos) goto none;
    if (device == -2)
      device = (t.device.device_type == kDLCUDA || t.device.device_type == kDLROCM) ? t.device.device_id : -1;
    PyObject* p = PyLong_FromUnsignedLongLong((unsigned long long)tm_data_ptr(&t));
    if (!p) {
      Py_DECREF(out);
      return NULL;
    }
    PyTuple_SET_ITEM(out, i + 2, p);
  }
  {
    PyObject* b = PyBytes_FromStringAndSize((const char*)buf, (Py_ssize_t)pos);
    if (!b) {
      Py_DECREF(out);
      return NULL;
    }
    PyTuple_SET_ITEM(out, 0, b);
    PyObject* d = PyLong_FromLong(device == -2 ? -1 : device);
    if (!d) {
      Py_DECREF(out);
      return NULL;
    }
    PyTuple_SET_ITEM(out, 1, d);
  }
  return out;
none:
  Py_DECREF(out);
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, "init(torch.Tensor, torch.nn.Parameter): bind PyTorch's DLPack C exchange API"},
    {"describe", (PyCFunction)(void (*)(void))describe, METH_FASTCALL,
     "describe(grad, *tensors) -> (meta, device, *data_ptrs) or None"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "qknorm_fastcall", NULL, -1, methods};

PyMODINIT_FUNC PyInit_qknorm_fastcall(void) { return PyModule_Create(&module); }
