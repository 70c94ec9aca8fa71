#include "mpi/rank_group.h"

#include <algorithm>
#include <cstdlib>

#include "common/error.h"

#ifdef MOEFY_WITH_MPI
// Only the C API is used: keep the deprecated C++ bindings (and their warnings) out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif

namespace moefy {

namespace {
#ifdef MOEFY_WITH_MPI
// Started by mpirun/mpiexec (Open MPI, MPICH/Hydra) or a PMIx launcher such as srun.
bool launched_by_mpi() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
        if (std::getenv(v)) return true;
    return false;
}
#endif
}  // namespace

bool RankGroup::built_with_mpi() {
#ifdef MOEFY_WITH_MPI
    return true;
#else
    return false;
#endif
}

RankGroup RankGroup::simulated(int rank, int size) {
    if (size < 1 || rank < 0 || rank >= size) fail("rank group: rank {} of {} is not a rank", rank, size);
    RankGroup g;
    g.rank_ = rank, g.size_ = size;
    return g;
}

#ifdef MOEFY_WITH_MPI
namespace {
// In place, in pieces: MPI counts are int.
void allreduce_sum(void* v, size_t n, size_t elem, MPI_Datatype type) {
    constexpr size_t kChunk = size_t(1) << 24;
    for (size_t i = 0; i < n; i += kChunk)
        MPI_Allreduce(MPI_IN_PLACE, static_cast<char*>(v) + i * elem, int(std::min(kChunk, n - i)), type, MPI_SUM,
                      MPI_COMM_WORLD);
}
}  // namespace
#endif

void RankGroup::sum(double* v, size_t n) const {
#ifdef MOEFY_WITH_MPI
    if (mpi_ && size_ > 1) allreduce_sum(v, n, sizeof(double), MPI_DOUBLE);
#endif
}

void RankGroup::sum(float* v, size_t n) const {
#ifdef MOEFY_WITH_MPI
    if (mpi_ && size_ > 1) allreduce_sum(v, n, sizeof(float), MPI_FLOAT);
#endif
}

void RankGroup::sum(int64_t* v, size_t n) const {
#ifdef MOEFY_WITH_MPI
    if (mpi_ && size_ > 1) allreduce_sum(v, n, sizeof(int64_t), MPI_INT64_T);
#endif
}

int64_t RankGroup::count_failed(bool failed) const {
    int64_t n = failed ? 1 : 0;
    sum(&n, 1);
    return n;
}

void RankGroup::throw_if_any_failed(const std::string& error, const char* what) const {
    const int64_t failed = count_failed(!error.empty());
    if (!error.empty()) throw Error(error);
    if (failed > 0) fail("{}: {} of {} ranks failed (their messages say why)", what, failed, size_);
}

MpiSession::MpiSession() {
#ifdef MOEFY_WITH_MPI
    if (!launched_by_mpi()) return;
    int ready = 0;
    MPI_Initialized(&ready);
    if (!ready) {
        if (MPI_Init(nullptr, nullptr) != MPI_SUCCESS) fail("MPI_Init failed");
        initialised_ = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &group_.rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &group_.size_);
    group_.mpi_ = true;
#endif
}

MpiSession::~MpiSession() {
#ifdef MOEFY_WITH_MPI
    int done = 0;
    MPI_Finalized(&done);
    if (initialised_ && !done) MPI_Finalize();
#endif
}

}  // namespace moefy
