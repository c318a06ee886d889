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

#include "dlpack_abi.h"

static DLTensorFromPyObjectNoSync from_py = NULL;
static PyTypeObject *t_tensor = NULL, *t_param = NULL;
static PyObject* is_neg_fn = NULL; /* torch.Tensor.is_neg, called with the tensor as its self */
static PyObject* s_dtype = NULL;
static PyObject* s_requires_grad = NULL;
static PyObject *dt_int8 = NULL, *dt_uint8 = NULL;

/* init(torch.Tensor, torch.nn.Parameter, torch.int8, torch.uint8): bind the exchange API; raises
 * when there is none. (DLPack gives torch's sub-byte "shell" dtypes int1..int7 / uint1..uint7 the
 * codes of int8 / uint8: for those codes the dtype object itself is compared.) */
static PyObject* init(PyObject* self, PyObject* args) {
  PyObject *tt, *tp, *i8, *u8;
  if (!PyArg_ParseTuple(args, "OOOO", &tt, &tp, &i8, &u8)) return NULL;
  if (!PyType_Check(tt) || !PyType_Check(tp)) {
    PyErr_SetString(PyExc_TypeError, "init(torch.Tensor, torch.nn.Parameter)");
    return NULL;
  }
  PyObject* cap = PyObject_GetAttrString(tt, "__dlpack_c_exchange_api__");
  if (!cap) return NULL;
  DLPackExchangeAPI* api = (DLPackExchangeAPI*)PyCapsule_GetPointer(cap, "dlpack_exchange_api");
  Py_DECREF(cap);
  if (!api) return NULL;
  if (api->header.version.major != 1) {
    PyErr_Format(PyExc_RuntimeError, "DLPack exchange API version %u.%u (need 1.x)",
                 api->header.version.major, api->header.version.minor);
    return NULL;
  }
  if (!api->dltensor_from_py_object_no_sync) {
    PyErr_SetString(PyExc_RuntimeError, "DLPack exchange API without dltensor_from_py_object_no_sync");
    return NULL;
  }
  is_neg_fn = PyObject_GetAttrString(tt, "is_neg");
  s_dtype = PyUnicode_InternFromString("dtype");
  s_requires_grad = PyUnicode_InternFromString("requires_grad");
  if (!is_neg_fn || !s_dtype || !s_requires_grad) return NULL;
  Py_INCREF(i8);
  Py_INCREF(u8);
  dt_int8 = i8;
  dt_uint8 = u8;
  from_py = api->dltensor_from_py_object_no_sync;
  Py_INCREF(tt);
  Py_INCREF(tp);
  t_tensor = (PyTypeObject*)tt;
  t_param = (PyTypeObject*)tp;
  Py_RETURN_NONE;
}

#define META_MAX 2048

/* 1 when the attribute `name` of `a` is true, 0 when false, -1 when it cannot be read. */
static int flag(PyObject* a, PyObject* name) {
  PyObject* v = PyObject_GetAttr(a, name);
  if (!v) {
    PyErr_Clear();
    return -1;
  }
  int t = PyObject_IsTrue(v);
  Py_DECREF(v);
  if (t < 0) PyErr_Clear();
  return t;
}

static PyObject* describe(PyObject* self, PyObject* const* argv, Py_ssize_t nargs) {
  unsigned char buf[META_MAX];
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
  if (!from_py) {
    PyErr_SetString(PyExc_RuntimeError, "qknorm native: init() not called");
    return NULL;
  }
  PyObject* out = PyTuple_New(n + 2);
  if (!out) return NULL;
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject* a = args[i];
    if (a == Py_None) {
      if (pos + 1 > META_MAX) goto none;
      buf[pos++] = 0xff;
      Py_INCREF(Py_None);
      PyTuple_SET_ITEM(out, i + 2, Py_None);
      continue;
    }
    PyTypeObject* ty = Py_TYPE(a);
    if (ty != t_tensor && ty != t_param) goto none;
    if (grad && flag(a, s_requires_grad) != 0) goto none;
    PyObject* neg = PyObject_Vectorcall(is_neg_fn, &a, 1, NULL);
    if (!neg) {
      PyErr_Clear();
      goto none;
    }
    int is_neg = PyObject_IsTrue(neg);
    Py_DECREF(neg);
    if (is_neg != 0) {
      PyErr_Clear();
      goto none;
    }
    DLTensor t; /* its shape and strides are valid until control returns to Python: copied below */
    if (from_py(a, &t) != 0) {
      PyErr_Clear();
      goto none;
    }
    int nd = t.ndim;
    if (nd < 0 || nd > 64 || pos + 1 + 4 + 8 + 16 * (size_t)nd > META_MAX) goto none;
    if (nd && (!t.shape || !t.strides)) goto none;
    if (t.dtype.code <= 1 && t.dtype.bits == 8) { /* int8/uint8 or a shell dtype sharing their code */
      PyObject* dt = PyObject_GetAttr(a, s_dtype);
      if (!dt) {
        PyErr_Clear();
        goto none;
      }
      int exact = dt == (t.dtype.code == 0 ? dt_int8 : dt_uint8);
      Py_DECREF(dt);
      if (!exact) goto none;
    }
    buf[pos++] = (unsigned char)nd;
    memcpy(buf + pos, &t.dtype, 4);
    pos += 4;
    memcpy(buf + pos, &t.device, 8);
    pos += 8;
    if (nd) {
      memcpy(buf + pos, t.shape, 8 * (size_t)nd);
      pos += 8 * (size_t)nd;
      memcpy(buf + pos, t.strides, 8 * (size_t)nd);
      pos += 8 * (size_t)nd;
    }
    if (device == -2)
      device = (t.device.device_type == kDLCUDA || t.device.device_type == kDLROCM) ? t.device.device_id : -1;
    PyObject* p = PyLong_FromUnsignedLongLong((unsigned long long)((char*)t.data + t.byte_offset));
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
