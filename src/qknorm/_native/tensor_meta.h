/* One tensor argument of a fast call, read in C (launchcall.c: describe and the express call).
 *
 * tm_init(torch.Tensor, torch.nn.Parameter, torch.int8, torch.uint8) binds PyTorch's DLPack C
 * exchange API (`__dlpack_c_exchange_api__`, DLPack 1.x, torch >= 2.10).
 * tm_read(a, &t, grad): 1 when `a` is exactly a torch.Tensor or nn.Parameter that DLPack describes
 *   faithfully (t then holds its dtype, device, shape, strides and data pointer, valid until control
 *   returns to Python); 0 when the fast call cannot take it: with `grad` (the caller's grad mode) a
 *   tensor that requires grad (autograd's path), another type, a negated view
 *   (`is_neg()`: DLPack would not say so), sparse/meta and other tensors DLPack refuses, or one of
 *   torch's sub-byte "shell" dtypes int1..7/uint1..7 (DLPack gives them the codes of int8/uint8), or a
 *   non-empty tensor without memory (torch._efficientzerotensor).
 * tm_pack(buf, pos, &t): its metadata appended to a key; the new position, or 0 when it does not fit.
 */
#ifndef QKNORM_TENSOR_META_H
#define QKNORM_TENSOR_META_H
#include <Python.h>
#include <string.h>

#include "dlpack_abi.h"

#define TM_META_MAX 2048

static DLTensorFromPyObjectNoSync tm_from_py = NULL;
static PyTypeObject *tm_tensor = NULL, *tm_param = NULL;
static PyObject* tm_is_neg = NULL; /* torch.Tensor.is_neg, called with the tensor as its self */
static PyObject *tm_s_dtype = NULL, *tm_s_requires_grad = NULL;
static PyObject *tm_int8 = NULL, *tm_uint8 = NULL;

/* 0, or -1 with an exception. Also returns the exchange API (NULL on error). */
static DLPackExchangeAPI* tm_init(PyObject* tt, PyObject* tp, PyObject* i8, PyObject* u8) {
  if (!PyType_Check(tt) || !PyType_Check(tp)) {
    PyErr_SetString(PyExc_TypeError, "init(torch.Tensor, torch.nn.Parameter, torch.int8, torch.uint8)");
    return NULL;
  }
  PyObject* cap = PyObject_GetAttrString(tt, "__dlpack_c_exchange_api__");
  if (!cap) return NULL;
  DLPackExchangeAPI* api = (DLPackExchangeAPI*)PyCapsule_GetPointer(cap, "dlpack_exchange_api");
  Py_DECREF(cap);
  if (!api) return NULL;
  if (api->header.version.major != 1) {
    PyErr_Format(PyExc_RuntimeError, "DLPack exchange API version %u.%u (need 1.x)", api->header.version.major,
                 api->header.version.minor);
    return NULL;
  }
  if (!api->dltensor_from_py_object_no_sync) {
    PyErr_SetString(PyExc_RuntimeError, "DLPack exchange API without dltensor_from_py_object_no_sync");
    return NULL;
  }
  PyObject* neg = PyObject_GetAttrString(tt, "is_neg");
  PyObject* a = PyUnicode_InternFromString("dtype");
  PyObject* b = PyUnicode_InternFromString("requires_grad");
  if (!neg || !a || !b) {
    Py_XDECREF(neg);
    Py_XDECREF(a);
    Py_XDECREF(b);
    return NULL;
  }
  tm_is_neg = neg;
  tm_s_dtype = a;
  tm_s_requires_grad = b;
  Py_INCREF(i8);
  Py_INCREF(u8);
  tm_int8 = i8;
  tm_uint8 = u8;
  Py_INCREF(tt);
  Py_INCREF(tp);
  tm_tensor = (PyTypeObject*)tt;
  tm_param = (PyTypeObject*)tp;
  tm_from_py = api->dltensor_from_py_object_no_sync;
  return api;
}

/* 1 when the attribute `name` of `a` is true, 0 when false, -1 when it cannot be read. */
static int tm_flag(PyObject* a, PyObject* name) {
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

static int tm_read(PyObject* a, DLTensor* t, int grad) {
  PyTypeObject* ty = Py_TYPE(a);
  if (!tm_from_py || (ty != tm_tensor && ty != tm_param)) return 0;
  if (grad && tm_flag(a, tm_s_requires_grad) != 0) return 0;
  PyObject* neg = PyObject_Vectorcall(tm_is_neg, &a, 1, NULL);
  if (!neg) {
    PyErr_Clear();
    return 0;
  }
  int is_neg = PyObject_IsTrue(neg);
  Py_DECREF(neg);
  if (is_neg != 0) {
    PyErr_Clear();
    return 0;
  }
  if (tm_from_py(a, t) != 0) {
    PyErr_Clear();
    return 0;
  }
  if (t->ndim < 0 || t->ndim > 64 || (t->ndim && (!t->shape || !t->strides))) return 0;
  if (!t->data) { /* no memory: only an empty tensor may have none (an efficient zero tensor has none either) */
    for (int32_t i = 0; i < t->ndim; i++)
      if (t->shape[i] == 0) goto empty;
    return 0;
  }
empty:
  if (t->dtype.code <= 1 && t->dtype.bits == 8) { /* int8/uint8 or a shell dtype sharing their code */
    PyObject* dt = PyObject_GetAttr(a, tm_s_dtype);
    if (!dt) {
      PyErr_Clear();
      return 0;
    }
    int exact = dt == (t->dtype.code == 0 ? tm_int8 : tm_uint8);
    Py_DECREF(dt);
    if (!exact) return 0;
  }
  return 1;
}

static size_t tm_pack(unsigned char* buf, size_t pos, const DLTensor* t) {
  size_t nd = (size_t)t->ndim;
  if (pos + 1 + 4 + 8 + 16 * nd > TM_META_MAX) return 0;
  buf[pos++] = (unsigned char)nd;
  memcpy(buf + pos, &t->dtype, 4);
  pos += 4;
  memcpy(buf + pos, &t->device, 8);
  pos += 8;
  if (nd) {
    memcpy(buf + pos, t->shape, 8 * nd);
    pos += 8 * nd;
    memcpy(buf + pos, t->strides, 8 * nd);
    pos += 8 * nd;
  }
  return pos;
}

static uint64_t tm_data_ptr(const DLTensor* t) { return (uint64_t)(uintptr_t)((char*)t->data + t->byte_offset); }

#endif
