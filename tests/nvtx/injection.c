/* A minimal NVTX v3 tool for tests/nvtx.rs: loaded through
 * NVTX_INJECTION64_PATH as nsys would be, it takes over the core
 * RangePushA / RangePop callbacks and writes each event to $NVTX_TEST_LOG.
 * Layout of the export table: nvtx3/nvtxDetail/nvtxTypes.h. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef void (*NvtxFunctionPointer)(void);
typedef NvtxFunctionPointer **NvtxFunctionTable;
typedef struct {
    size_t struct_size;
    int (*GetModuleFunctionTable)(int module, NvtxFunctionTable *out_table, unsigned int *out_size);
} NvtxExportTableCallbacks;
typedef const void *(*NvtxGetExportTableFunc)(uint32_t export_table_id);

enum { ETID_CALLBACKS = 1, MODULE_CORE = 1, CBID_RANGE_PUSH_A = 9, CBID_RANGE_POP = 11 };

static FILE *log_file;
static int depth;

static int range_push(const char *message) {
    fprintf(log_file, "push %s\n", message);
    fflush(log_file);
    return depth++;
}

static int range_pop(void) {
    fprintf(log_file, "pop\n");
    fflush(log_file);
    return --depth;
}

int InitializeInjectionNvtx2(NvtxGetExportTableFunc get_export_table) {
    const NvtxExportTableCallbacks *callbacks = get_export_table(ETID_CALLBACKS);
    NvtxFunctionTable table;
    unsigned int size;
    const char *path = getenv("NVTX_TEST_LOG");
    if (callbacks == NULL || path == NULL || !callbacks->GetModuleFunctionTable(MODULE_CORE, &table, &size) ||
        size <= CBID_RANGE_POP)
        return 0;
    log_file = fopen(path, "w");
    if (log_file == NULL) return 0;
    *table[CBID_RANGE_PUSH_A] = (NvtxFunctionPointer)range_push;
    *table[CBID_RANGE_POP] = (NvtxFunctionPointer)range_pop;
    return 1;
}
