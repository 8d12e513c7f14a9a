#pragma once

#include "workers/job_type.hpp"

namespace switchyard::workers {

/// Registers the diagnostic job types (only with --diagnostics): noop, alloc, crash, fork,
/// open_files, hang and append_log, for benchmarks and for tests that inject faults.
void register_diagnostic_types(Catalogue& catalogue);

}  // namespace switchyard::workers
