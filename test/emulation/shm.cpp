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
const std::string kMeeting = "pcxemu-meet.";

struct Control {
  std::uint64_t magic;
  std::int32_t nranks;
  std::atomic<std::int32_t> attached;
  // followed by Slot slots[nranks]
};
// A rank's seat at the meeting: its place, then its process id (0 until it arrives).
struct Slot {
  std::atomic<pid_t> pid;
  Place place;
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

// Sizes a new segment with its memory reserved, so that a full /dev/shm is an error
// here rather than a SIGBUS when the memory is first written.
bool reserve(int fd, std::size_t bytes) { return posix_fallocate(fd, 0, static_cast<off_t>(bytes)) == 0; }

// Opens the meeting segment of `path`, creating it (whole, by rename) if nobody has.
int open_control(const std::string& path, int nranks, std::string& error) {
  const std::size_t bytes = sizeof(Control) + sizeof(Slot) * static_cast<std::size_t>(nranks);
  for (;;) {
    const int fd = open(path.c_str(), O_RDWR);
    if (fd >= 0 || errno != ENOENT) {
      if (fd < 0) error = system_error("cannot open", path);
      return fd;
    }
    const std::string made = temporary();
    const int fresh = open(made.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fresh < 0 || !reserve(fresh, bytes)) {
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
      auto* slots = reinterpret_cast<Slot*>(control + 1);
      for (int r = 0; r < nranks; ++r) new (&slots[r]) Slot{{0}, {0, -1}};
    }
    const bool won = link(made.c_str(), path.c_str()) == 0;
    unlink(made.c_str());
    if (won) return fresh;
    close(fresh);  // another rank created it first: use theirs
  }
}

// Calls `visit` with the name of every entry of /dev/shm.
template <class Visit>
void each_segment(Visit&& visit) {
  DIR* directory = opendir(kDirectory.c_str());
  if (directory == nullptr) return;
  while (const dirent* entry = readdir(directory)) visit(std::string(entry->d_name));
  closedir(directory);
}

bool dead(pid_t pid) { return pid > 0 && kill(pid, 0) != 0 && errno == ESRCH; }

// A meeting nobody alive takes part in: every rank that arrived has died, or none
// arrived within a minute of its creation.
bool abandoned(const std::string& path) {
  const int fd = open(path.c_str(), O_RDWR);
  if (fd < 0) return false;
  struct stat info {};
  fstat(fd, &info);
  const Mapping map(fd, static_cast<std::size_t>(info.st_size));
  const auto* control = reinterpret_cast<const Control*>(map.data());
  if (control == nullptr || static_cast<std::size_t>(info.st_size) < sizeof(Control) ||
      control->magic != kControlMagic ||
      static_cast<std::size_t>(info.st_size) < sizeof(Control) + sizeof(Slot) * static_cast<std::size_t>(control->nranks)) {
    return false;
  }
  const auto* slots = reinterpret_cast<const Slot*>(control + 1);
  bool any = false;
  for (int r = 0; r < control->nranks; ++r) {
    const pid_t pid = slots[r].pid.load();
    if (pid != 0 && !dead(pid)) return false;
    any = any || pid != 0;
  }
  return any || info.st_mtime + 60 < time(nullptr);
}

}  // namespace

std::vector<pid_t> rendezvous(const std::string& id, int nranks, int rank, Place mine, std::vector<Place>& places,
                              const std::atomic<bool>& cancelled, std::string& error) {
  const std::string path = kDirectory + kMeeting + id;
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
  auto* slots = reinterpret_cast<Slot*>(control + 1);
  Slot& seat = slots[rank];
  pid_t none = 0;
  if (!seat.pid.compare_exchange_strong(none, -1)) {
    error = "rank " + std::to_string(rank) + " of communicator " + id + " was already taken by process " +
            std::to_string(none);
    return {};
  }
  seat.place = mine;
  seat.pid.store(getpid());  // publishes the place with it
  // Once everyone is here the name has done its job; the mappings keep the memory.
  if (control->attached.fetch_add(1) + 1 == nranks) unlink(path.c_str());
  std::vector<pid_t> found(static_cast<std::size_t>(nranks));
  for (Backoff backoff;; backoff.pause()) {
    bool all = true;
    for (int r = 0; r < nranks; ++r) all = all && (found[static_cast<std::size_t>(r)] = slots[r].pid.load()) > 0;
    if (all) {
      places.resize(found.size());
      for (int r = 0; r < nranks; ++r) places[static_cast<std::size_t>(r)] = slots[r].place;
      return found;
    }
    if (cancelled.load()) {
      seat.pid.store(0);
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
  if (fd < 0 || !reserve(fd, kBlobData + bytes)) {
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

bool wait_read(const std::string& name, const std::atomic<bool>& cancelled) {
  const std::string path = kDirectory + name;
  for (Backoff backoff; access(path.c_str(), F_OK) == 0; backoff.pause()) {
    if (cancelled.load()) return false;
  }
  return true;
}

void sweep_dead_segments() {
  each_segment([](const std::string& name) {
    if (name.starts_with(kMeeting)) {
      if (abandoned(kDirectory + name)) unlink((kDirectory + name).c_str());
    } else if (name.starts_with("pcxemu.") && dead(static_cast<pid_t>(std::strtol(name.c_str() + 7, nullptr, 10)))) {
      unlink((kDirectory + name).c_str());
    }
  });
}

void remove_own_segments(const std::string& comm_id) {
  const std::string mine = "pcxemu." + std::to_string(getpid()) + "." + comm_id + ".";
  each_segment([&](const std::string& name) {
    if (name.starts_with(mine)) unlink((kDirectory + name).c_str());
  });
}

}  // namespace pcxemu
