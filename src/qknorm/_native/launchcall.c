/* qknorm's compiled kernel launch (built at first use by qknorm/native.py; needs neither CUDA's
 * nor torch's headers: the driver is opened with dlopen, as Triton's own launcher does).
 *
 * A *launch record* is a bytes object made once per call plan (qknorm/launch.py, `_record`): the
 * CUfunction of a Triton-compiled kernel, its grid, block and shared memory, the device, PDL and
 * cooperative flags, and every kernel parameter already packed in an 8-byte slot, except the
 * per-call ones (data pointers, in general calls also eps), whose slots and kinds it names.
 *
 * launch(record, *per_call) -> True (launched) or False (the current CUDA context is not the
 *   record's device: the caller takes its other path). Raises RuntimeError on a driver error.
 *   The stream is PyTorch's current stream of the device (DLPack C exchange API).
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

static PyObject* launch(PyObject* self, PyObject* const* args, Py_ssize_t n) {
  if (n < 1 || !PyBytes_CheckExact(args[0])) {
    PyErr_SetString(PyExc_TypeError, "launch(record: bytes, *per_call)");
    return NULL;
  }
  const char* raw = PyBytes_AS_STRING(args[0]);
  Py_ssize_t len = PyBytes_GET_SIZE(args[0]);
  Record rec;
  if (len < (Py_ssize_t)sizeof(Record)) goto bad_record;
  memcpy(&rec, raw, sizeof(Record));
  if (rec.nparams > MAX_PARAMS || rec.nhead > MAX_HEAD || len != (Py_ssize_t)(sizeof(Record) + 8 * rec.nparams))
    goto bad_record;
  if ((Py_ssize_t)rec.nhead != n - 1) {
    PyErr_Format(PyExc_TypeError, "launch record takes %u per-call arguments, got %zd", rec.nhead, n - 1);
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
    PyObject* v = args[1 + i];
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

static PyMethodDef methods[] = {
    {"init", init, METH_VARARGS, "init(torch.Tensor): open the CUDA driver, bind PyTorch's current-stream getter"},
    {"param_info", param_info, METH_O, "param_info(function) -> [(offset, size), ...] or None"},
    {"launch", (PyCFunction)(void (*)(void))launch, METH_FASTCALL, "launch(record, *per_call) -> bool"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "qknorm_launchcall", NULL, -1, methods};

PyMODINIT_FUNC PyInit_qknorm_launchcall(void) { return PyModule_Create(&module); }
