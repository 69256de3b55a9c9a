// How emulated ranks in different processes of one machine meet and move data: POSIX
// shared memory under /dev/shm. A communicator's members meet in a segment named after
// its id; every operation's data travels in segments its owner publishes (written under a
// temporary name, then renamed, so a reader never sees half of one) and its last reader
// removes. Segment names start with the owner's process id, so that what a dead process
// left behind can be found and removed.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "emulator.hpp"

namespace pcxemu {
namespace {

constexpr std::uint64_t kControlMagic = 0x7063786d65657431;  // "pcxmeet1"
const std::string kDirectory = "/dev/shm/";

struct Control {
  std::uint64_t magic;
  std::int32_t nranks;
  std::atomic<std::int32_t> attached;
  // followed by std::atomic<pid_t> pids[nranks], 0 until the rank arrives
};
static_assert(std::atomic<pid_t>::is_always_lock_free, "pids are shared between processes");

struct BlobHeader {
  std::atomic<std::int32_t> readers;
  std::uint64_t bytes;
};
constexpr std::size_t kBlobData = 64;  // data starts on its own cache line
static_assert(sizeof(BlobHeader) <= kBlobData);

std::string system_error(const std::string& what, const std::string& path) {
  return what + " " + path + ": " + std::strerror(errno);
}

// A unique temporary name of this process.
std::string temporary() {
  static std::atomic<std::uint64_t> counter{0};
  return kDirectory + "pcxemu." + std::to_string(getpid()) + ".tmp" + std::to_string(counter++);
}

// A mapping that is unmapped and closed with its owner.
class Mapping {
 public:
  Mapping(int fd, std::size_t bytes) : fd_(fd), bytes_(bytes) {
    data_ = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (data_ == MAP_FAILED) data_ = nullptr;
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    if (data_ != nullptr) munmap(data_, bytes_);
    close(fd_);
  }
  [[nodiscard]] std::byte* data() const { return static_cast<std::byte*>(data_); }

 private:
  int fd_;
  std::size_t bytes_;
  void* data_ = nullptr;
};

// Opens the meeting segment of `path`, creating it (whole, by rename) if nobody has.
int open_control(const std::string& path, int nranks, std::string& error) {
  const std::size_t bytes = sizeof(Control) + sizeof(pid_t) * static_cast<std::size_t>(nranks);
  for (;;) {
    const int fd = open(path.c_str(), O_RDWR);
    if (fd >= 0 || errno != ENOENT) {
      if (fd < 0) error = system_error("cannot open", path);
      return fd;
    }
    const std::string made = temporary();
    const int fresh = open(made.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fresh < 0 || ftruncate(fresh, static_cast<off_t>(bytes)) != 0) {
      error = system_error("cannot create", made);
      if (fresh >= 0) close(fresh), unlink(made.c_str());
      return -1;
    }
    {
      Mapping map(dup(fresh), bytes);
      if (map.data() == nullptr) {
        error = system_error("cannot map", made);
        close(fresh), unlink(made.c_str());
        return -1;
      }
      auto* control = new (map.data()) Control{kControlMagic, nranks, {0}};
      auto* pids = reinterpret_cast<std::atomic<pid_t>*>(control + 1);
      for (int r = 0; r < nranks; ++r) new (&pids[r]) std::atomic<pid_t>(0);
    }
    const bool won = link(made.c_str(), path.c_str()) == 0;
    unlink(made.c_str());
    if (won) return fresh;
    close(fresh);  // another rank created it first: use theirs
  }
}

}  // namespace

std::vector<pid_t> rendezvous(const std::string& id, int nranks, int rank, const std::atomic<bool>& cancelled,
                              std::string& error) {
  const std::string path = kDirectory + "pcxemu-meet." + id;
  const int fd = open_control(path, nranks, error);
  if (fd < 0) return {};
  struct stat info {};
  fstat(fd, &info);
  Mapping map(fd, static_cast<std::size_t>(info.st_size));
  auto* control = reinterpret_cast<Control*>(map.data());
  if (control == nullptr || control->magic != kControlMagic || control->nranks != nranks) {
    error = control == nullptr ? system_error("cannot map", path)
                               : "ranks disagree on the size of communicator " + id + ": " +
                                     std::to_string(control->nranks) + " and " + std::to_string(nranks);
    return {};
  }
  auto* pids = reinterpret_cast<std::atomic<pid_t>*>(control + 1);
  pid_t none = 0;
  if (!pids[rank].compare_exchange_strong(none, getpid())) {
    error = "rank " + std::to_string(rank) + " of communicator " + id + " was already taken by process " +
            std::to_string(none);
    return {};
  }
  // Once everyone is here the name has done its job; the mappings keep the memory.
  if (control->attached.fetch_add(1) + 1 == nranks) unlink(path.c_str());
  std::vector<pid_t> found(static_cast<std::size_t>(nranks));
  for (Backoff backoff;; backoff.pause()) {
    bool all = true;
    for (int r = 0; r < nranks; ++r) all = all && (found[static_cast<std::size_t>(r)] = pids[r].load()) != 0;
    if (all) return found;
    if (cancelled.load()) {
      pids[rank].store(0);
      if (control->attached.fetch_sub(1) == 1) unlink(path.c_str());
      return {};
    }
  }
}

std::string segment_name(pid_t owner, const std::string& comm_id, const std::string& tag) {
  return "pcxemu." + std::to_string(owner) + "." + comm_id + "." + tag;
}

bool publish(const std::string& name, const void* data, std::size_t bytes, int readers, std::string& error) {
  if (readers == 0) return true;
  const std::string made = temporary();
  const int fd = open(made.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(kBlobData + bytes)) != 0) {
    error = system_error("cannot create", made);
    if (fd >= 0) close(fd), unlink(made.c_str());
    return false;
  }
  {
    Mapping map(fd, kBlobData + bytes);
    if (map.data() == nullptr) {
      error = system_error("cannot map", made);
      unlink(made.c_str());
      return false;
    }
    new (map.data()) BlobHeader{{readers}, bytes};
    if (bytes > 0) std::memcpy(map.data() + kBlobData, data, bytes);
  }
  if (rename(made.c_str(), (kDirectory + name).c_str()) != 0) {
    error = system_error("cannot publish", kDirectory + name);
    unlink(made.c_str());
    return false;
  }
  return true;
}

bool consume(const std::string& name, const std::atomic<bool>& cancelled,
             const std::function<void(const std::byte*, std::size_t)>& read, std::string& error) {
  const std::string path = kDirectory + name;
  int fd = -1;
  for (Backoff backoff; (fd = open(path.c_str(), O_RDWR)) < 0; backoff.pause()) {
    if (errno != ENOENT) {
      error = system_error("cannot open", path);
      return false;
    }
    if (cancelled.load()) return false;
  }
  struct stat info {};
  fstat(fd, &info);
  const auto bytes = static_cast<std::size_t>(info.st_size);
  Mapping map(fd, bytes);
  if (map.data() == nullptr || bytes < kBlobData) {
    error = system_error("cannot map", path);
    return false;
  }
  auto* header = reinterpret_cast<BlobHeader*>(map.data());
  read(map.data() + kBlobData, header->bytes);
  if (header->readers.fetch_sub(1) == 1) unlink(path.c_str());
  return true;
}

void sweep_dead_segments() {
  DIR* directory = opendir(kDirectory.c_str());
  if (directory == nullptr) return;
  while (const dirent* entry = readdir(directory)) {
    const char* name = entry->d_name;
    if (std::strncmp(name, "pcxemu.", 7) != 0) continue;
    const long owner = std::strtol(name + 7, nullptr, 10);
    if (owner > 0 && kill(static_cast<pid_t>(owner), 0) != 0 && errno == ESRCH) {
      unlink((kDirectory + name).c_str());
    }
  }
  closedir(directory);
}

}  // namespace pcxemu
