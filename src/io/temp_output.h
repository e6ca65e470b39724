// Temporary outputs (`<out>.tmp.<pid>`): removed when SIGINT, SIGTERM or SIGHUP interrupts the
// run, and recognised (and removed) by a later run when the run that made them died without
// cleaning up (SIGKILL, power loss).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace lancet {

// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (so in every thread started after it:
// call it first thing in main) and starts a thread that waits for them with sigwait. On a signal
// that thread, an ordinary thread rather than a handler, so free to use the heap and the file
// system, removes every registered temporary, prints one line on stderr naming what it removed
// and ends the process with status 128 + signal (130 for SIGINT, 143 for SIGTERM). Writers that
// try to register a new temporary meanwhile wait, so nothing new appears while it removes.
void install_interrupt_cleanup();

// True once an interruption is being handled; hold_if_interrupted() then never returns (the
// cleanup thread ends the process), so the main thread neither reports an error caused by the
// removal nor exits with another status.
bool interrupted();
void hold_if_interrupted();

// A temporary file or folder registered for removal on interruption for this object's lifetime.
// Register before creating it: an interruption between the two removes nothing, harmlessly.
class TempRegistration {
  public:
    explicit TempRegistration(std::string path);
    ~TempRegistration();  // unregisters (does not remove: the owner does, or commits it)
    TempRegistration(const TempRegistration&) = delete;
    TempRegistration& operator=(const TempRegistration&) = delete;

    // Runs `publish` (the rename of the temporary into place) with the interruption cleanup held
    // off, then unregisters: an interruption sees either the temporary (and removes it) or the
    // finished output (and leaves it), never a half-renamed state. Exceptions from `publish`
    // propagate and leave the registration in place.
    void commit(const std::function<void()>& publish);

  private:
    int id_ = -1;
};

// One output file written under a temporary name: the temporaries of dead runs beside `path` are
// removed, `<path>.tmp.<pid>` is registered for removal on interruption and created; commit()
// fsyncs, closes and renames it onto `path` (with the interruption cleanup held off); destroyed
// before commit(), it closes and removes the temporary. Every error names `path`. The one
// temp/fsync/rename sequence behind the safetensors, .pth and whole-file writers.
class TempFile {
  public:
    explicit TempFile(std::string path);
    ~TempFile();
    TempFile(const TempFile&) = delete;
    TempFile& operator=(const TempFile&) = delete;

    int fd() const { return fd_; }
    const std::string& path() const { return path_; }
    const std::string& temp_path() const { return tmp_; }
    // Writes all n bytes at the current offset (EINTR retried; a short or failed write is an
    // Error naming path, e.g. a full disk).
    void write_all(const void* data, size_t n);
    // n bytes at `offset` (patching a header written earlier).
    void pwrite_all(const void* data, size_t n, uint64_t offset);
    void commit();

  private:
    std::string path_, tmp_;
    TempRegistration reg_;
    int fd_ = -1;
    bool committed_ = false;
};

// An anonymous scratch file (tmpfile(3) in $TMPDIR: unlinked at once, so it vanishes with the
// process however it ends) of `bytes` bytes, zero-filled, read and written at offsets. For data
// that grows with the input and is needed later in another order (a decoded video gathered
// channels-first, blended tiles): the page cache holds it, not the process's memory. Errors
// name `what`.
class ScratchFile {
  public:
    ScratchFile(uint64_t bytes, std::string what);
    ~ScratchFile();
    ScratchFile(const ScratchFile&) = delete;
    ScratchFile& operator=(const ScratchFile&) = delete;

    void read(void* data, size_t n, uint64_t offset) const;
    void write(const void* data, size_t n, uint64_t offset);
    uint64_t size() const { return bytes_; }

  private:
    std::FILE* f_ = nullptr;
    int fd_ = -1;
    uint64_t bytes_ = 0;
    std::string what_;
};

// Removes the temporaries `<final_path>.tmp.<pid>` (and `.old.<pid>`, the replaced output a forced
// run moves aside, when `final_path` exists) left next to `final_path` by runs whose process is
// gone (kill(pid, 0) fails with ESRCH), one log line each. A live owner's temporaries, and this
// process's own, are left alone. Returns how many were removed.
int remove_stale_temps(const std::string& final_path);

}  // namespace lancet
