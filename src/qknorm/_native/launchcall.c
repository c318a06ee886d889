/* qknorm's compiled kernel launch (built at first use by qknorm/native.py; needs neither CUDA's
 * nor torch's headers: the driver is opened with dlopen, as Triton's own launcher does).
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

#include "dlpack_abi.h"

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

static PyObject* init(PyObject* self, PyObject* args) {
  PyObject* tt;
  if (!PyArg_ParseTuple(args, "O", &tt)) return NULL;
  PyObject* cap = PyObject_GetAttrString(tt, "__dlpack_c_exchange_api__");
  if (!cap) return NULL;
  DLPackExchangeAPI* api = (DLPackExchangeAPI*)PyCapsule_GetPointer(cap, "dlpack_exchange_api");
  Py_DECREF(cap);
  if (!api) return NULL;
  if (api->header.version.major != 1 || !api->current_work_stream) {
    PyErr_SetString(PyExc_RuntimeError, "DLPack exchange API 1.x with current_work_stream needed");
    return NULL;
  }
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
  if (!lib) {
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
    PyErr_SetString(PyExc_RuntimeError, "libcuda.so.1 lacks cuLaunchKernelEx/cuCtxGetCurrent/cuCtxGetDevice");
    return NULL;
  }
  current_stream = api->current_work_stream;
  Py_RETURN_NONE;
}

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

/* Launch `record` with the per-call arguments head[0..nhead): Py_True, Py_False (another device
 * is current) or NULL with an exception. */
static PyObject* launch_record(PyObject* record, PyObject* const* head, Py_ssize_t nhead) {
  const char* raw = PyBytes_AS_STRING(record);
  Py_ssize_t len = PyBytes_GET_SIZE(record);
  Record rec;
  if (len < (Py_ssize_t)sizeof(Record)) goto bad_record;
  memcpy(&rec, raw, sizeof(Record));
  if (rec.nparams > MAX_PARAMS || rec.nhead > MAX_HEAD || len != (Py_ssize_t)(sizeof(Record) + 8 * rec.nparams))
    goto bad_record;
  if ((Py_ssize_t)rec.nhead != nhead) {
    PyErr_Format(PyExc_TypeError, "launch record takes %u per-call arguments, got %zd", rec.nhead, nhead);
    return NULL;
  }
  if (!p_launch) {
    PyErr_SetString(PyExc_RuntimeError, "init() not called");
    return NULL;
  }
  CUcontext ctx = NULL;
  CUdevice dev = -1;
  if (p_ctx_current(&ctx) != 0 || ctx == NULL || p_ctx_device(&dev) != 0 || dev != rec.device) Py_RETURN_FALSE;
  void* stream = NULL;
  if (current_stream(kDLCUDA, rec.device, &stream) != 0) return NULL;
  uint64_t slots[MAX_PARAMS];
  memcpy(slots, raw + sizeof(Record), 8 * (size_t)rec.nparams);
  for (uint32_t i = 0; i < rec.nhead; i++) {
    PyObject* v = head[i];
    uint32_t s = rec.head_slot[i];
    if (s >= rec.nparams) goto bad_record;
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
        goto bad_record;
    }
    slots[s] = bits;
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
  if (r != 0) return driver_error("cuLaunchKernelEx", r);
  Py_RETURN_TRUE;
bad_record:
  PyErr_SetString(PyExc_ValueError, "malformed launch record");
  return NULL;
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

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, "init(torch.Tensor): open the CUDA driver, bind PyTorch's current-stream getter"},
    {"param_info", param_info, METH_O, "param_info(function) -> [(offset, size), ...] or None"},
    {"set_hooks", set_hooks, METH_VARARGS, "set_hooks(triton.knobs.runtime or None, triton.knobs.HookChain or None)"},
    {"pick", (PyCFunction)(void (*)(void))pick, METH_FASTCALL, "pick(records, *per_call) -> record or None"},
    {"launch_from", (PyCFunction)(void (*)(void))launch_from, METH_FASTCALL,
     "launch_from(records, *per_call) -> bool"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "qknorm_launchcall", NULL, -1, methods};

PyMODINIT_FUNC PyInit_qknorm_launchcall(void) { return PyModule_Create(&module); }
