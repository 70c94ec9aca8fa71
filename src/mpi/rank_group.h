#pragma once
// The processes that share one data-parallel run (importance, split graph,
// convert --sequential, eval and build under mpirun), and MPI's lifetime.
// Library code only sums over a RankGroup; it never aborts the processes or
// registers exit handlers: an error on one rank is counted by every rank
// (count_failed) and returns as an ordinary moefy::Error everywhere.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>

namespace moefy {

class RankGroup {
public:
    RankGroup() = default;  // one process, alone
    // Rank `rank` of `size` whose sums are NOT reduced (sum() is a no-op): a
    // test adds the ranks' results itself.
    static RankGroup simulated(int rank, int size);
    static bool built_with_mpi();

    int rank() const { return rank_; }
    int size() const { return size_; }
    // Element-wise sum over the ranks, in place, every rank gets the result.
    void sum(double* v, size_t n) const;
    void sum(float* v, size_t n) const;
    void sum(int64_t* v, size_t n) const;
    // How many ranks pass failed = true; every rank must call it (it is a sum).
    int64_t count_failed(bool failed) const;
    // Called by every rank after its share of a stage, with its error message
    // ("" when it did not fail): rethrows it, or fails when another rank failed
    // ("<what>: N of M ranks failed"), so no rank waits forever in a later sum.
    void throw_if_any_failed(const std::string& error, const char* what) const;
    // Runs body() on this rank, then throw_if_any_failed with its error, if any:
    // a stage's share, wrapped so that a failure reaches every rank.
    template <class Body>
    void run_share(const char* what, Body&& body) const {
        std::string error;
        try {
            body();
        } catch (const std::exception& e) {
            error = e.what();
        }
        throw_if_any_failed(error, what);
    }

private:
    friend class MpiSession;
    int rank_ = 0, size_ = 1;
    bool mpi_ = false;
};

// MPI for as long as this object lives: initialised when moefy is built with
// MPI and the process was started by an MPI launcher (mpirun, mpiexec, srun),
// finalised by the destructor. Otherwise group() is a single process.
class MpiSession {
public:
    MpiSession();  // throws moefy::Error when MPI_Init fails
    ~MpiSession();
    MpiSession(const MpiSession&) = delete;
    MpiSession& operator=(const MpiSession&) = delete;

    const RankGroup& group() const { return group_; }

private:
    RankGroup group_;
    bool initialised_ = false;  // by this session, so it finalises
};

}  // namespace moefy
