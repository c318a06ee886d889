/* The DLPack 1.x ABI (dlpack/dlpack.h, Apache-2.0): only the parts qknorm's C files use, so
 * they build without torch's headers. Checked against torch's ATen/dlpack.h by tests/test_native.py. */
#ifndef QKNORM_DLPACK_ABI_H
#define QKNORM_DLPACK_ABI_H
#include <stdint.h>

typedef struct { uint32_t major; uint32_t minor; } DLPackVersion;
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} DLTensor;
typedef int (*DLTensorFromPyObjectNoSync)(void* py_object, DLTensor* out);
typedef struct DLPackExchangeAPIHeader {
  DLPackVersion version;
  struct DLPackExchangeAPIHeader* prev_api;
} DLPackExchangeAPIHeader;
typedef struct {
  DLPackExchangeAPIHeader header;
  void* managed_tensor_allocator;
  void* managed_tensor_from_py_object_no_sync;
  void* managed_tensor_to_py_object_no_sync;
  DLTensorFromPyObjectNoSync dltensor_from_py_object_no_sync;
  int (*current_work_stream)(int32_t device_type, int32_t device_id, void** out_stream);
} DLPackExchangeAPI;
enum { kDLCPU = 1, kDLCUDA = 2, kDLROCM = 10 };

#endif
