/* qknorm's compiled fast call (built at first use by qknorm/native.py with the C compiler and Python
 * headers Triton's own launchers are built with; needs neither CUDA's nor torch's headers: the driver is
 * opened with dlopen, as Triton's own launcher does, and tensors are read through PyTorch's DLPack C
 * exchange API, `__dlpack_c_exchange_api__`, torch >= 2.10).
 *
 * describe(grad, *args) -> (meta: bytes, device: int, ptr0, ptr1, ...) or None
 *   For each argument, None or a torch.Tensor / nn.Parameter (exact types): its dtype, device,
 *   shape and strides packed into `meta` (a None argument adds one marker byte), and its data
 *   pointer (None for a None argument). `device` is the first tensor's CUDA/ROCm index, -1 on
 *   any other device. None when an argument is of another type, cannot be described through
 *   DLPack (sparse, ...), is a negated view (`is_neg()`: DLPack would not say so), or, with
 *   `grad` true (the caller's grad mode), requires grad (tensor_meta.h: tm_read).
 *
 * A *launch record* is a bytes object made once per call plan (qknorm/launch.py, `launch_record`): the
 * CUfunction of a Triton-compiled kernel, its grid, block and shared memory, the device, PDL and
 * cooperative flags, and every kernel parameter already packed in an 8-byte slot, except the
 * per-call ones (data pointers, in general calls also eps), whose slots and kinds it names.
 *
 * launch_from(records, *per_call) -> True (launched) or False (no record for these pointers'
 *   alignment, Triton's launch hooks active, or the current CUDA context not the record's device:
 *   the caller takes its other path). Raises RuntimeError on a driver error. The stream is
 *   PyTorch's current stream of the device (DLPack C exchange API).
 * pick(records, *per_call) -> the record launch_from would launch, or None (tests).
 * param_info(function) -> [(offset, size), ...] of a loaded kernel's parameters
 *   (cuFuncGetParamInfo, CUDA 12.4+), or None when the driver cannot say.
 *
 * The *express call* (an op's whole fast call in C, after its Python fast call has run once):
 * call(op, *args) -> the op's result, or NotImplemented (the caller takes its Python path). `args`
 *   are the public function's arguments in a fixed order per op: tensors (exactly torch.Tensor or
 *   nn.Parameter), None, exact floats, bools and ints, and instances of set_express's identity types. Their key (op code; per argument: its
 *   metadata as in describe, the index of an earlier argument that is the same object,
 *   or the scalar's type and bits) is looked up in the table given to set_express; the *entry*
 *   found there, made by ops/_plan.py after a Python fast call launched through a record, says
 *   which arguments are the kernel's pointers (head), which pairs of views must be apart (byte
 *   ranges disjoint, or the pointer distance the Python call checked exactly), which outputs to
 *   allocate, whose autograd versions to bump and what to return. Anything else — an unknown key,
 *   a tensor requiring grad under grad mode, a failed overlap check, no record for the pointers'
 *   alignment, launch hooks active, another device current, a driver error — is NotImplemented
 *   before anything is written; the Python path then decides (and raises where it should).
 * register(entry, op, *args) -> bool: store `entry` under the key of (op, *args).
 * key(op, *args) -> bytes or None (tests).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>

/* ---- CUDA driver ABI (cuda.h, CUDA 12+): only the parts used here ---- */
typedef int CUresult;
typedef int CUdevice;
typedef void* CUcontext;
typedef void* CUfunction;
typedef void* CUstream;
typedef struct {
  int id;
  char pad[4];
  union {
    char pad[64];
    int cooperative;
    int programmaticStreamSerializationAllowed;
    void* align_;
  } value;
} CUlaunchAttribute;
typedef struct {
  unsigned int gridDimX, gridDimY, gridDimZ;
  unsigned int blockDimX, blockDimY, blockDimZ;
  unsigned int sharedMemBytes;
  CUstream hStream;
  CUlaunchAttribute* attrs;
  unsigned int numAttrs;
} CUlaunchConfig;
enum { CU_LAUNCH_ATTRIBUTE_COOPERATIVE = 2, CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6 };

typedef CUresult (*launch_ex_t)(const CUlaunchConfig*, CUfunction, void**, void**);
typedef CUresult (*ctx_get_current_t)(CUcontext*);
typedef CUresult (*ctx_get_device_t)(CUdevice*);
typedef CUresult (*get_error_string_t)(CUresult, const char**);
typedef CUresult (*func_get_param_info_t)(CUfunction, size_t, size_t*, size_t*);

static launch_ex_t p_launch = NULL;
static ctx_get_current_t p_ctx_current = NULL;
static ctx_get_device_t p_ctx_device = NULL;
static get_error_string_t p_error_string = NULL;
static func_get_param_info_t p_param_info = NULL;

#include "tensor_meta.h"

static int (*current_stream)(int32_t, int32_t, void**) = NULL;

/* ---- the launch record ---- */
#define MAX_PARAMS 64
#define MAX_HEAD 16
typedef struct {
  uint64_t function;
  uint32_t grid[3];
  uint32_t block_x;
  uint32_t shared;
  int32_t device;
  uint32_t flags; /* 1: PDL, 2: cooperative */
  uint32_t nparams;
  uint32_t nhead;
  uint8_t head_slot[MAX_HEAD];
  uint8_t head_kind[MAX_HEAD]; /* 'p' 64-bit pointer, 'i' int32, 'l' int64, 'f' fp32 */
  uint32_t reserved;
} Record; /* followed by nparams 8-byte slots */

static int driver_open = 0;

/* init(torch.Tensor, torch.nn.Parameter, torch.int8, torch.uint8, need_driver): bind PyTorch's DLPack
 * exchange API and open the CUDA driver (without `need_driver`, a missing driver is no error: the
 * module then launches only through set_test_launch's function). */
static PyObject* init(PyObject* self, PyObject* args) {
  PyObject *tt, *tp, *i8, *u8;
  int need_driver = 1;
  if (!PyArg_ParseTuple(args, "OOOO|p", &tt, &tp, &i8, &u8, &need_driver)) return NULL;
  DLPackExchangeAPI* api = tm_init(tt, tp, i8, u8);
  if (!api) return NULL;
  if (!api->current_work_stream) {
    PyErr_SetString(PyExc_RuntimeError, "DLPack exchange API 1.x with current_work_stream needed");
    return NULL;
  }
  current_stream = api->current_work_stream;
  if (driver_open) Py_RETURN_NONE;
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
    if (!need_driver) Py_RETURN_NONE;
    PyErr_Format(PyExc_RuntimeError, "cannot open libcuda.so.1: %s", dlerror());
    return NULL;
  }
  p_launch = (launch_ex_t)dlsym(lib, "cuLaunchKernelEx");
  p_ctx_current = (ctx_get_current_t)dlsym(lib, "cuCtxGetCurrent");
  p_ctx_device = (ctx_get_device_t)dlsym(lib, "cuCtxGetDevice");
  p_error_string = (get_error_string_t)dlsym(lib, "cuGetErrorString");
  p_param_info = (func_get_param_info_t)dlsym(lib, "cuFuncGetParamInfo"); /* may be NULL */
  if (!p_launch || !p_ctx_current || !p_ctx_device || !p_error_string) {
    p_launch = NULL;
    if (!need_driver) Py_RETURN_NONE;
    PyErr_SetString(PyExc_RuntimeError, "libcuda.so.1 lacks cuLaunchKernelEx/cuCtxGetCurrent/cuCtxGetDevice");
    return NULL;
  }
  driver_open = 1;
  Py_RETURN_NONE;
}

static PyObject* has_driver(PyObject* self, PyObject* unused) { return PyBool_FromLong(p_launch != NULL); }

static PyObject* driver_error(const char* what, CUresult r) {
  const char* s = NULL;
  if (p_error_string) p_error_string(r, &s);
  PyErr_Format(PyExc_RuntimeError, "%s: CUDA driver error %d (%s)", what, r, s ? s : "unknown");
  return NULL;
}

static PyObject* param_info(PyObject* self, PyObject* arg) {
  if (!p_launch) {
    PyErr_SetString(PyExc_RuntimeError, "init() not called");
    return NULL;
  }
  if (!p_param_info) Py_RETURN_NONE;
  unsigned long long f = PyLong_AsUnsignedLongLong(arg);
  if (f == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
  PyObject* out = PyList_New(0);
  if (!out) return NULL;
  for (size_t i = 0; i < 4 * MAX_PARAMS; i++) {
    size_t off = 0, size = 0;
    CUresult r = p_param_info((CUfunction)(uintptr_t)f, i, &off, &size);
    if (r != 0) break; /* past the last parameter */
    PyObject* t = Py_BuildValue("(nn)", (Py_ssize_t)off, (Py_ssize_t)size);
    if (!t || PyList_Append(out, t) < 0) {
      Py_XDECREF(t);
      Py_DECREF(out);
      return NULL;
    }
    Py_DECREF(t);
  }
  return out;
}

static PyObject* test_launch = NULL; /* set_test_launch's function, or NULL */

/* set_test_launch(fn or None), tests only: every launch calls fn(record, head_values, head_objects)
 * instead of the driver (head_objects: the express call's tensors behind the pointers, else None);
 * its truth is whether it launched. */
static PyObject* set_test_launch(PyObject* self, PyObject* fn) {
  PyObject* old = test_launch;
  test_launch = fn == Py_None ? NULL : fn;
  Py_XINCREF(test_launch);
  Py_XDECREF(old);
  Py_RETURN_NONE;
}

/* A record's header, checked: 1, or 0 with an exception. */
static int read_record(PyObject* record, Record* rec) {
  Py_ssize_t len = PyBytes_GET_SIZE(record);
  if (len >= (Py_ssize_t)sizeof(Record)) {
    memcpy(rec, PyBytes_AS_STRING(record), sizeof(Record));
    if (rec->nparams <= MAX_PARAMS && rec->nhead <= MAX_HEAD && len == (Py_ssize_t)(sizeof(Record) + 8 * rec->nparams))
      return 1;
  }
  PyErr_SetString(PyExc_ValueError, "malformed launch record");
  return 0;
}

/* Launch `record` with its per-call slots set to vals[0..nhead) (bit patterns): 1 launched, 0 not
 * (another device is current; or the test function said no), -1 with an exception. `objs`: the
 * tensors behind the values, for the test function only (may be NULL). */
static int launch_raw(PyObject* record, const uint64_t* vals, uint32_t nhead, PyObject* const* objs) {
  if (test_launch) {
    PyObject* v = PyTuple_New(nhead);
    PyObject* o = objs ? PyTuple_New(nhead) : (Py_INCREF(Py_None), Py_None);
    if (!v || !o) {
      Py_XDECREF(v);
      Py_XDECREF(o);
      return -1;
    }
    for (uint32_t i = 0; i < nhead; i++) {
      PyObject* x = PyLong_FromUnsignedLongLong(vals[i]);
      if (!x) {
        Py_DECREF(v);
        Py_DECREF(o);
        return -1;
      }
      PyTuple_SET_ITEM(v, i, x);
      if (objs) {
        Py_INCREF(objs[i]);
        PyTuple_SET_ITEM(o, i, objs[i]);
      }
    }
    PyObject* r = PyObject_CallFunctionObjArgs(test_launch, record, v, o, NULL);
    Py_DECREF(v);
    Py_DECREF(o);
    if (!r) return -1;
    int t = PyObject_IsTrue(r);
    Py_DECREF(r);
    return t;
  }
  Record rec;
  if (!read_record(record, &rec)) return -1;
  if (rec.nhead != nhead) {
    PyErr_Format(PyExc_TypeError, "launch record takes %u per-call arguments, got %u", rec.nhead, nhead);
    return -1;
  }
  if (!p_launch) {
    PyErr_SetString(PyExc_RuntimeError, "no CUDA driver (init)");
    return -1;
  }
  CUcontext ctx = NULL;
  CUdevice dev = -1;
  if (p_ctx_current(&ctx) != 0 || ctx == NULL || p_ctx_device(&dev) != 0 || dev != rec.device) return 0;
  void* stream = NULL;
  if (current_stream(kDLCUDA, rec.device, &stream) != 0) return -1;
  uint64_t slots[MAX_PARAMS];
  memcpy(slots, PyBytes_AS_STRING(record) + sizeof(Record), 8 * (size_t)rec.nparams);
  for (uint32_t i = 0; i < rec.nhead; i++) {
    uint32_t s = rec.head_slot[i];
    if (s >= rec.nparams) {
      PyErr_SetString(PyExc_ValueError, "malformed launch record");
      return -1;
    }
    slots[s] = vals[i];
  }
  void* params[MAX_PARAMS];
  for (uint32_t j = 0; j < rec.nparams; j++) params[j] = &slots[j];
  CUlaunchAttribute attrs[2];
  memset(attrs, 0, sizeof(attrs));
  unsigned int na = 0;
  if (rec.flags & 1) {
    attrs[na].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attrs[na].value.programmaticStreamSerializationAllowed = 1;
    na++;
  }
  if (rec.flags & 2) {
    attrs[na].id = CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
    attrs[na].value.cooperative = 1;
    na++;
  }
  CUlaunchConfig cfg;
  cfg.gridDimX = rec.grid[0];
  cfg.gridDimY = rec.grid[1];
  cfg.gridDimZ = rec.grid[2];
  cfg.blockDimX = rec.block_x;
  cfg.blockDimY = 1;
  cfg.blockDimZ = 1;
  cfg.sharedMemBytes = rec.shared;
  cfg.hStream = (CUstream)stream;
  cfg.attrs = attrs;
  cfg.numAttrs = na;
  CUresult r = p_launch(&cfg, (CUfunction)(uintptr_t)rec.function, params, NULL);
  if (r != 0) {
    driver_error("cuLaunchKernelEx", r);
    return -1;
  }
  return 1;
}

/* Launch `record` with the per-call arguments head[0..nhead) (Python ints and floats, converted
 * by the record's kinds): Py_True, Py_False (another device is current) or NULL with an exception. */
static PyObject* launch_record(PyObject* record, PyObject* const* head, Py_ssize_t nhead) {
  Record rec;
  if (!read_record(record, &rec)) return NULL;
  if ((Py_ssize_t)rec.nhead != nhead) {
    PyErr_Format(PyExc_TypeError, "launch record takes %u per-call arguments, got %zd", rec.nhead, nhead);
    return NULL;
  }
  uint64_t vals[MAX_HEAD];
  for (uint32_t i = 0; i < rec.nhead; i++) {
    PyObject* v = head[i];
    uint64_t bits = 0;
    switch (rec.head_kind[i]) {
      case 'p': {
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
        bits = u;
        break;
      }
      case 'i': {
        long x = PyLong_AsLong(v);
        if (x == -1 && PyErr_Occurred()) return NULL;
        if (x < INT32_MIN || x > INT32_MAX) {
          PyErr_SetString(PyExc_OverflowError, "per-call int32 argument out of range");
          return NULL;
        }
        int32_t y = (int32_t)x;
        memcpy(&bits, &y, 4);
        break;
      }
      case 'l': {
        long long x = PyLong_AsLongLong(v);
        if (x == -1 && PyErr_Occurred()) return NULL;
        memcpy(&bits, &x, 8);
        break;
      }
      case 'f': {
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) return NULL;
        float f = (float)d;
        memcpy(&bits, &f, 4);
        break;
      }
      default:
        PyErr_SetString(PyExc_ValueError, "malformed launch record");
        return NULL;
    }
    vals[i] = bits;
  }
  int r = launch_raw(record, vals, rec.nhead, NULL);
  if (r < 0) return NULL;
  return PyBool_FromLong(r);
}

/* ---- picking a plan's record: alignment bits and Triton's launch hooks ---- */
static PyObject* hook_owner = NULL; /* triton.knobs.runtime, or NULL (Triton without knobs) */
static PyObject* hook_chain_type = NULL; /* triton.knobs.HookChain, or NULL */
static PyObject *s_enter = NULL, *s_exit = NULL, *s_calls = NULL;

/* set_hooks(triton.knobs.runtime or None, triton.knobs.HookChain or None): where Triton's launch
 * enter/exit hooks live, and the type of an empty-able hook chain. */
static PyObject* set_hooks(PyObject* self, PyObject* args) {
  PyObject *owner, *chain;
  if (!PyArg_ParseTuple(args, "OO", &owner, &chain)) return NULL;
  if (!s_enter || !s_exit || !s_calls) {
    PyObject* a = PyUnicode_InternFromString("launch_enter_hook");
    PyObject* b = PyUnicode_InternFromString("launch_exit_hook");
    PyObject* c = PyUnicode_InternFromString("calls");
    if (!a || !b || !c) {
      Py_XDECREF(a);
      Py_XDECREF(b);
      Py_XDECREF(c);
      return NULL;
    }
    s_enter = a;
    s_exit = b;
    s_calls = c;
  }
  PyObject* old_owner = hook_owner;
  PyObject* old_chain = hook_chain_type;
  hook_owner = owner == Py_None ? NULL : owner;
  hook_chain_type = chain == Py_None ? NULL : chain;
  Py_XINCREF(hook_owner);
  Py_XINCREF(hook_chain_type);
  Py_XDECREF(old_owner);
  Py_XDECREF(old_chain);
  Py_RETURN_NONE;
}

/* 1 when both hooks are None or hook chains (exactly triton.knobs.HookChain) whose `calls` list is
 * empty, as launch.hooks_idle; else 0. */
static int hooks_idle(void) {
  if (!hook_owner) return 1;
  PyObject* names[2] = {s_enter, s_exit};
  for (int i = 0; i < 2; i++) {
    PyObject* h = PyObject_GetAttr(hook_owner, names[i]);
    if (!h) {
      PyErr_Clear();
      return 0;
    }
    if (h == Py_None) {
      Py_DECREF(h);
      continue;
    }
    if (!hook_chain_type || (PyObject*)Py_TYPE(h) != hook_chain_type) {
      Py_DECREF(h);
      return 0;
    }
    PyObject* calls = PyObject_GetAttr(h, s_calls);
    Py_DECREF(h);
    if (!calls) {
      PyErr_Clear();
      return 0;
    }
    int empty = PyList_CheckExact(calls) && PyList_GET_SIZE(calls) == 0;
    Py_DECREF(calls);
    if (!empty) return 0;
  }
  return 1;
}

#define MAX_POINTERS 30
/* The index of a call's entry: bit i set when the i-th leading int argument (a data pointer) is
 * not 16-byte aligned (launch.align_bits); -1 (no record) past MAX_POINTERS pointers or on an int
 * that is not a pointer. */
static long alignment_bits(PyObject* const* head, Py_ssize_t n) {
  long bits = 0;
  for (Py_ssize_t i = 0; i < n; i++) {
    if (!PyLong_CheckExact(head[i])) break;
    if (i >= MAX_POINTERS) return -1;
    unsigned long long p = PyLong_AsUnsignedLongLong(head[i]);
    if (p == (unsigned long long)-1 && PyErr_Occurred()) {
      PyErr_Clear();
      return -1;
    }
    if (p & 15) bits |= 1L << i;
  }
  return bits;
}

/* The record for these pointers, a new reference, or NULL (no record, or hooks active): the record
 * list entry of the call's alignment bits, when it is a record and Triton's launch hooks are idle.
 * The hooks are checked first: their attributes may run Python code, which may change the list. */
static PyObject* pick_record(PyObject* records, PyObject* const* head, Py_ssize_t n) {
  if (!PyList_Check(records) || !hooks_idle()) return NULL;
  long bits = alignment_bits(head, n);
  if (bits < 0 || bits >= PyList_GET_SIZE(records)) return NULL;
  PyObject* r = PyList_GET_ITEM(records, bits);
  if (!PyBytes_CheckExact(r)) return NULL;
  Py_INCREF(r);
  return r;
}

static PyObject* pick(PyObject* self, PyObject* const* args, Py_ssize_t n) {
  if (n < 1) {
    PyErr_SetString(PyExc_TypeError, "pick(records, *per_call)");
    return NULL;
  }
  PyObject* r = pick_record(args[0], args + 1, n - 1);
  if (!r) Py_RETURN_NONE;
  return r;
}

/* launch_from(records, *head) -> True (launched), False (no record for this call, hooks active,
 * or another device current: the caller takes its other path); raises on a driver error. */
static PyObject* launch_from(PyObject* self, PyObject* const* args, Py_ssize_t n) {
  if (n < 1) {
    PyErr_SetString(PyExc_TypeError, "launch_from(records, *per_call)");
    return NULL;
  }
  PyObject* r = pick_record(args[0], args + 1, n - 1);
  if (!r) Py_RETURN_FALSE;
  PyObject* res = launch_record(r, args + 1, n - 1);
  Py_DECREF(r);
  return res;
}

/* ---- describe: a fast call's tensors, for the Python fast call's plan key ---- */
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

/* ---- the express call ---- */
#define X_MAX_ARGS 24
#define X_NONE INT64_MIN /* a check without an exact pointer distance */
static PyObject* x_table = NULL;   /* dict: key bytes -> entry */
static PyObject* x_grad = NULL;    /* torch.is_grad_enabled */
static PyObject* x_bump = NULL;    /* torch._C._increment_version (takes a tuple of tensors) */
static PyObject* x_ident = NULL;   /* tuple of types whose instances are keyed by identity (torch.dtype) */
static unsigned long long x_launches = 0; /* express calls that launched */

static PyObject* launches(PyObject* self, PyObject* unused) { return PyLong_FromUnsignedLongLong(x_launches); }

/* set_express(table or None, torch.is_grad_enabled, increment_version, identity_types): the entries'
 * table (None: express calls off, every call NotImplemented); instances of identity_types (a tuple of
 * types whose instances live for good, such as torch.dtype) are keyed by identity. */
static PyObject* set_express(PyObject* self, PyObject* args) {
  PyObject *table, *grad, *bump, *ident;
  if (!PyArg_ParseTuple(args, "OOOO!", &table, &grad, &bump, &PyTuple_Type, &ident)) return NULL;
  if (table != Py_None && !PyDict_Check(table)) {
    PyErr_SetString(PyExc_TypeError, "set_express: table must be a dict or None");
    return NULL;
  }
  PyObject *ot = x_table, *og = x_grad, *ob = x_bump, *oi = x_ident;
  x_table = table == Py_None ? NULL : table;
  x_grad = grad;
  x_bump = bump;
  x_ident = ident;
  Py_XINCREF(x_table);
  Py_INCREF(x_grad);
  Py_INCREF(x_bump);
  Py_INCREF(x_ident);
  Py_XDECREF(ot);
  Py_XDECREF(og);
  Py_XDECREF(ob);
  Py_XDECREF(oi);
  Py_RETURN_NONE;
}

/* The key of (op, *args) into buf: its length, 0 when the express call cannot take the arguments
 * (see the header), -1 with an exception. ptr[i]: argument i's data pointer (0 for non-tensors);
 * is_t[i]: whether it is a tensor. */
static Py_ssize_t x_key(PyObject* const* args, Py_ssize_t n, unsigned char* buf, uint64_t* ptr, char* is_t) {
  if (n < 1 || n > X_MAX_ARGS + 1 || !PyLong_CheckExact(args[0]) || !tm_from_py || !x_grad) return 0;
  long op = PyLong_AsLong(args[0]);
  if (op < 0 || op > 255) {
    PyErr_Clear();
    return 0;
  }
  PyObject* g = PyObject_CallNoArgs(x_grad);
  if (!g) return -1;
  int grad = PyObject_IsTrue(g);
  Py_DECREF(g);
  if (grad < 0) return -1;
  size_t pos = 0;
  buf[pos++] = (unsigned char)op;
  for (Py_ssize_t i = 1; i < n; i++) {
    PyObject* a = args[i];
    Py_ssize_t k = i - 1;
    ptr[k] = 0;
    is_t[k] = 0;
    if (pos + 10 > TM_META_MAX) return 0;
    if (a == Py_None) {
      buf[pos++] = 0xff;
      continue;
    }
    if (PyBool_Check(a)) {
      buf[pos++] = 0xfc;
      buf[pos++] = a == Py_True;
      continue;
    }
    if (PyFloat_CheckExact(a)) {
      double d = PyFloat_AS_DOUBLE(a);
      buf[pos++] = 0xfd;
      memcpy(buf + pos, &d, 8);
      pos += 8;
      continue;
    }
    if (PyLong_CheckExact(a)) {
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(a, &overflow);
      if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
      }
      buf[pos++] = 0xfb;
      memcpy(buf + pos, &v, 8);
      pos += 8;
      continue;
    }
    if (x_ident) {
      int ident = 0;
      for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(x_ident); j++)
        if ((PyObject*)Py_TYPE(a) == PyTuple_GET_ITEM(x_ident, j)) ident = 1;
      if (ident) {
        uint64_t id = (uint64_t)(uintptr_t)a;
        buf[pos++] = 0xfa;
        memcpy(buf + pos, &id, 8);
        pos += 8;
        continue;
      }
    }
    Py_ssize_t same = -1;
    for (Py_ssize_t j = 1; j < i; j++)
      if (args[j] == a) {
        same = j - 1;
        break;
      }
    if (same >= 0) {
      buf[pos++] = 0xfe;
      buf[pos++] = (unsigned char)same;
      ptr[k] = ptr[same];
      is_t[k] = 1;
      continue;
    }
    DLTensor t;
    if (!tm_read(a, &t, grad)) return 0;
    pos = tm_pack(buf, pos, &t);
    if (!pos) return 0;
    ptr[k] = tm_data_ptr(&t);
    is_t[k] = 1;
  }
  return (Py_ssize_t)pos;
}

static PyObject* key(PyObject* self, PyObject* const* args, Py_ssize_t n) {
  unsigned char buf[TM_META_MAX];
  uint64_t ptr[X_MAX_ARGS];
  char is_t[X_MAX_ARGS];
  Py_ssize_t len = x_key(args, n, buf, ptr, is_t);
  if (len < 0) return NULL;
  if (len == 0) Py_RETURN_NONE;
  return PyBytes_FromStringAndSize((const char*)buf, len);
}

static PyObject* register_entry(PyObject* self, PyObject* const* args, Py_ssize_t n) {
  unsigned char buf[TM_META_MAX];
  uint64_t ptr[X_MAX_ARGS];
  char is_t[X_MAX_ARGS];
  if (n < 2) {
    PyErr_SetString(PyExc_TypeError, "register(entry, op, *args)");
    return NULL;
  }
  if (!x_table) Py_RETURN_FALSE;
  Py_ssize_t len = x_key(args + 1, n - 1, buf, ptr, is_t);
  if (len < 0) return NULL;
  if (len == 0) Py_RETURN_FALSE;
  PyObject* kb = PyBytes_FromStringAndSize((const char*)buf, len);
  if (!kb) return NULL;
  int r = PyDict_SetItem(x_table, kb, args[0]);
  Py_DECREF(kb);
  if (r < 0) return NULL;
  Py_RETURN_TRUE;
}

/* An entry's program (ops/_plan.py packs it): nhead, nbump, ncheck, pad; head_arg[16]; bump_arg[16];
 * 4 bytes pad; then ncheck checks. */
typedef struct {
  uint8_t nhead, nbump, ncheck, pad0;
  uint8_t head_arg[16];
  uint8_t bump_arg[16];
  uint8_t pad1[4];
} XProg;
typedef struct {
  int64_t ai, bi, aj, bj, delta; /* byte ranges [p_i + ai, p_i + bi) and [p_j + aj, p_j + bj) */
  uint8_t i, j;
  uint8_t pad[6];
} XCheck;

static PyObject* call(PyObject* self, PyObject* const* args, Py_ssize_t n) {
  unsigned char buf[TM_META_MAX];
  uint64_t ptr[X_MAX_ARGS];
  char is_t[X_MAX_ARGS];
  PyObject* obj[X_MAX_ARGS];
  PyObject* made[X_MAX_ARGS] = {NULL};
  PyObject *entry = NULL, *result = NULL, *record = NULL;
  if (!x_table) Py_RETURN_NOTIMPLEMENTED;
  Py_ssize_t len = x_key(args, n, buf, ptr, is_t);
  if (len < 0) return NULL;
  if (len == 0) Py_RETURN_NOTIMPLEMENTED;
  Py_ssize_t na = n - 1;
  {
    PyObject* kb = PyBytes_FromStringAndSize((const char*)buf, len);
    if (!kb) return NULL;
    entry = PyDict_GetItemWithError(x_table, kb);
    Py_DECREF(kb);
    if (!entry) {
      if (PyErr_Occurred()) return NULL;
      Py_RETURN_NOTIMPLEMENTED;
    }
  }
  Py_INCREF(entry); /* the calls below may run Python code that changes the table */
  if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) goto miss;
  PyObject* records = PyTuple_GET_ITEM(entry, 0);
  PyObject* prog_b = PyTuple_GET_ITEM(entry, 1);
  PyObject* allocs = PyTuple_GET_ITEM(entry, 2);
  PyObject* ret = PyTuple_GET_ITEM(entry, 3);
  if (!PyList_Check(records) || !PyBytes_CheckExact(prog_b) || !PyTuple_CheckExact(allocs)) goto miss;
  if (PyBytes_GET_SIZE(prog_b) < (Py_ssize_t)sizeof(XProg)) goto miss;
  XProg prog;
  memcpy(&prog, PyBytes_AS_STRING(prog_b), sizeof(XProg));
  if (prog.nhead > 16 || prog.nbump > 16 ||
      PyBytes_GET_SIZE(prog_b) != (Py_ssize_t)(sizeof(XProg) + sizeof(XCheck) * prog.ncheck))
    goto miss;
  for (Py_ssize_t i = 0; i < na; i++) obj[i] = args[i + 1];
  /* 1. the overlap checks, on the given tensors */
  for (uint32_t c = 0; c < prog.ncheck; c++) {
    XCheck ck;
    memcpy(&ck, PyBytes_AS_STRING(prog_b) + sizeof(XProg) + sizeof(XCheck) * c, sizeof(XCheck));
    if (ck.i >= na || ck.j >= na || !is_t[ck.i] || !is_t[ck.j]) goto miss;
    int64_t pi = (int64_t)ptr[ck.i], pj = (int64_t)ptr[ck.j];
    if (!(pi + ck.bi <= pj + ck.aj || pj + ck.bj <= pi + ck.ai || (ck.delta != X_NONE && pj - pi == ck.delta)))
      goto miss;
  }
  /* 2. new outputs: (arg index, fn, index of the argument it is made like or -1, kwargs or None):
   * fn(that argument, **kwargs) or fn(**kwargs) */
  for (Py_ssize_t a = 0; a < PyTuple_GET_SIZE(allocs); a++) {
    PyObject* spec = PyTuple_GET_ITEM(allocs, a);
    if (!PyTuple_CheckExact(spec) || PyTuple_GET_SIZE(spec) != 4) goto miss;
    long idx = PyLong_AsLong(PyTuple_GET_ITEM(spec, 0));
    long src = PyLong_AsLong(PyTuple_GET_ITEM(spec, 2));
    PyObject* kw = PyTuple_GET_ITEM(spec, 3);
    if (PyErr_Occurred() || idx < 0 || idx >= na || src < -1 || src >= na || made[idx] || obj[idx] != Py_None ||
        (src >= 0 && !is_t[src]) || (kw != Py_None && !PyDict_Check(kw))) {
      PyErr_Clear();
      goto miss;
    }
    PyObject* t = PyObject_VectorcallDict(PyTuple_GET_ITEM(spec, 1), src >= 0 ? &obj[src] : NULL, src >= 0 ? 1 : 0,
                                          kw == Py_None ? NULL : kw);
    if (!t) goto fail;
    made[idx] = t;
    obj[idx] = t;
    DLTensor dt;
    if (!tm_read(t, &dt, 0)) goto miss;
    ptr[idx] = tm_data_ptr(&dt);
    is_t[idx] = 1;
  }
  /* 3. the record of the head pointers' alignment */
  {
    uint64_t vals[16];
    PyObject* hobj[16];
    long bits = 0;
    for (uint32_t h = 0; h < prog.nhead; h++) {
      uint8_t i = prog.head_arg[h];
      if (i >= na || !is_t[i]) goto miss;
      vals[h] = ptr[i];
      hobj[h] = obj[i];
      if (ptr[i] & 15) bits |= 1L << h;
    }
    if (!hooks_idle() || bits >= PyList_GET_SIZE(records)) goto miss;
    record = PyList_GET_ITEM(records, bits);
    if (!PyBytes_CheckExact(record)) goto miss;
    Py_INCREF(record);
    if (!test_launch) {
      Record rec;
      if (!read_record(record, &rec)) {
        PyErr_Clear();
        goto miss;
      }
      if (rec.nhead != prog.nhead) goto miss;
      for (uint32_t h = 0; h < rec.nhead; h++)
        if (rec.head_kind[h] != 'p') goto miss;
    }
    /* 4. launch: a driver error leaves the call to the Python path (which meets it again and
     * gives up the record there) */
    int r = launch_raw(record, vals, prog.nhead, hobj);
    if (r < 0) {
      if (test_launch) goto fail;
      PyErr_Clear();
      goto miss;
    }
    if (r == 0) goto miss;
    x_launches++;
  }
  /* 5. written tensors: autograd versions; then the result */
  if (prog.nbump) {
    PyObject* tb = PyTuple_New(prog.nbump);
    if (!tb) goto fail;
    for (uint32_t b = 0; b < prog.nbump; b++) {
      uint8_t i = prog.bump_arg[b];
      PyObject* o = i < na ? obj[i] : Py_None;
      Py_INCREF(o);
      PyTuple_SET_ITEM(tb, b, o);
    }
    PyObject* r = PyObject_CallOneArg(x_bump, tb);
    Py_DECREF(tb);
    if (!r) goto fail;
    Py_DECREF(r);
  }
  if (PyLong_CheckExact(ret)) {
    long i = PyLong_AsLong(ret);
    if (i < 0 || i >= na) goto bad_entry;
    result = obj[i];
    Py_INCREF(result);
  } else if (PyTuple_CheckExact(ret)) {
    Py_ssize_t m = PyTuple_GET_SIZE(ret);
    result = PyTuple_New(m);
    if (!result) goto fail;
    for (Py_ssize_t q = 0; q < m; q++) {
      long i = PyLong_AsLong(PyTuple_GET_ITEM(ret, q));
      if (i < 0 || i >= na) {
        Py_CLEAR(result);
        goto bad_entry;
      }
      Py_INCREF(obj[i]);
      PyTuple_SET_ITEM(result, q, obj[i]);
    }
  } else {
    goto bad_entry;
  }
  goto done;
bad_entry: /* after the launch: an entry that names no result is a bug of its maker */
  PyErr_Clear();
  PyErr_SetString(PyExc_ValueError, "qknorm express call: malformed entry");
  goto done;
miss:
  result = Py_NotImplemented;
  Py_INCREF(result);
  goto done;
fail:
  result = NULL;
done:
  for (Py_ssize_t i = 0; i < X_MAX_ARGS; i++) Py_XDECREF(made[i]);
  Py_XDECREF(record);
  Py_XDECREF(entry);
  return result;
}

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, "init(torch.Tensor, torch.nn.Parameter, torch.int8, torch.uint8, need_driver=True)"},
    {"param_info", param_info, METH_O, "param_info(function) -> [(offset, size), ...] or None"},
    {"set_hooks", set_hooks, METH_VARARGS, "set_hooks(triton.knobs.runtime or None, triton.knobs.HookChain or None)"},
    {"pick", (PyCFunction)(void (*)(void))pick, METH_FASTCALL, "pick(records, *per_call) -> record or None"},
    {"launch_from", (PyCFunction)(void (*)(void))launch_from, METH_FASTCALL,
     "launch_from(records, *per_call) -> bool"},
    {"has_driver", has_driver, METH_NOARGS, "has_driver() -> whether the CUDA driver is open"},
    {"describe", (PyCFunction)(void (*)(void))describe, METH_FASTCALL,
     "describe(grad, *tensors) -> (meta, device, *data_ptrs) or None"},
    {"set_test_launch", set_test_launch, METH_O, "set_test_launch(fn or None), tests only"},
    {"set_express", set_express, METH_VARARGS,
     "set_express(table or None, is_grad_enabled, increment_version, identity_types)"},
    {"call", (PyCFunction)(void (*)(void))call, METH_FASTCALL, "call(op, *args) -> result or NotImplemented"},
    {"register", (PyCFunction)(void (*)(void))register_entry, METH_FASTCALL, "register(entry, op, *args) -> bool"},
    {"key", (PyCFunction)(void (*)(void))key, METH_FASTCALL, "key(op, *args) -> bytes or None"},
    {"launches", launches, METH_NOARGS, "launches() -> how many express calls launched"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "qknorm_launchcall", NULL, -1, methods};

PyMODINIT_FUNC PyInit_qknorm_launchcall(void) { return PyModule_Create(&module); }
