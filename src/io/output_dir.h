// OutputDir: an output folder built under a temporary name and renamed into place only when
// complete.
#pragma once

#include <memory>
#include <string>

#include "io/temp_output.h"

namespace lancet {

class OutputDir {
  public:
    // Refuses an existing `final_path` unless `force`. Creates `<final_path>.tmp.<pid>`, registered
    // for removal on SIGINT/SIGTERM, after removing the temporaries of dead runs beside it.
    OutputDir(std::string final_path, bool force);
    ~OutputDir();  // removes the temporary folder unless commit() succeeded
    OutputDir(const OutputDir&) = delete;
    OutputDir& operator=(const OutputDir&) = delete;

    // Path of `name` inside the temporary folder.
    std::string file(const std::string& name) const;
    const std::string& final_path() const { return final_; }
    // Moves the finished folder into place (replacing an old one when forced).
    void commit();

  private:
    std::string final_, tmp_;
    bool force_, committed_ = false;
    std::unique_ptr<TempRegistration> reg_;
};

// True when a and b name the same file or folder or one lies inside the other (either may not
// exist yet), so writers can refuse to put output over, inside or around a source checkpoint.
bool path_overlaps(const std::string& a, const std::string& b);

// Marks a folder as a source (an opened model checkpoint) for the guard's lifetime: every writer
// (OutputDir, SafetensorsWriter, write_file_atomic) refuses output equal to, inside or around it,
// so no command can write over the checkpoint it reads, whatever output option it takes.
class SourceGuard {
  public:
    explicit SourceGuard(std::string dir);
    ~SourceGuard();
    SourceGuard(const SourceGuard&) = delete;
    SourceGuard& operator=(const SourceGuard&) = delete;

  private:
    std::string dir_;
};

// Fails (naming `out` and the source) when `out` overlaps a folder a live SourceGuard holds.
void check_not_source(const std::string& out);

}  // namespace lancet
