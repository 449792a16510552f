// hsx_mmap: map a file MAP_SHARED and hand it to JavaScript as an ArrayBuffer without copying.
//
// Why a native addon: Node has no mmap. The persistence layer keeps a device's flash and FRAM in
// files so that committed state survives a crash of the gateway (the page cache outlives the
// process) and another process can inspect it while the device runs.
//
// Lifetime: the mapping state is shared between the Mapping object and the ArrayBuffer's
// finalizer. Whoever comes first unmaps; `unmap()` also detaches the ArrayBuffer so every view
// over it becomes length 0 instead of pointing at unmapped memory.
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

struct MapState {
  std::mutex mu;
  void* addr = nullptr;
  size_t length = 0;
  int fd = -1;  // kept open only while an advisory lock is held
  std::string path;

  // Caller holds mu.
  void ReleaseLocked() {
    if (addr != nullptr) {
      munmap(addr, length);
      addr = nullptr;
    }
    if (fd >= 0) {
      close(fd);  // also drops the flock
      fd = -1;
    }
  }
};

using StatePtr = std::shared_ptr<MapState>;

Napi::Error ErrnoError(Napi::Env env, int err, const char* syscall, const std::string& path,
                       const std::string& detail = "") {
  std::string msg = std::string(syscall) + " " + path + ": " + std::strerror(err);
  if (!detail.empty()) msg += " (" + detail + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  e.Set("path", Napi::String::New(env, path));
  return e;
}

void FinalizeBuffer(Napi::Env /*env*/, void* /*data*/, StatePtr* hint) {
  {
    std::lock_guard<std::mutex> lock((*hint)->mu);
    (*hint)->ReleaseLocked();
  }
  delete hint;
}

// Page-align a [offset, offset+length) range for msync, clamped to the mapping.
bool AlignRange(const MapState& s, double offD, double lenD, size_t* start, size_t* len) {
  if (!(offD >= 0) || !(lenD >= 0)) return false;
  size_t off = static_cast<size_t>(offD);
  size_t n = static_cast<size_t>(lenD);
  if (off > s.length || n > s.length - off) return false;
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  size_t aligned = off - (off % page);
  *start = aligned;
  *len = n + (off - aligned);
  return true;
}

class SyncWorker : public Napi::AsyncWorker {
 public:
  SyncWorker(Napi::Env env, StatePtr state, size_t start, size_t len)
      : Napi::AsyncWorker(env), state_(std::move(state)), start_(start), len_(len),
        deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->addr == nullptr) {
      err_ = EBADF;
      return;
    }
    if (len_ > 0 && msync(static_cast<char*>(state_->addr) + start_, len_, MS_SYNC) != 0) err_ = errno;
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(ErrnoError(env, err_, "msync", state_->path).Value());
    } else {
      deferred_.Resolve(env.Undefined());
    }
  }

 private:
  StatePtr state_;
  size_t start_;
  size_t len_;
  int err_ = 0;
  Napi::Promise::Deferred deferred_;
};

class Mapping : public Napi::ObjectWrap<Mapping> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Mapping",
                       {
                           InstanceAccessor<&Mapping::Buffer>("buffer"),
                           InstanceAccessor<&Mapping::Mapped>("mapped"),
                           InstanceAccessor<&Mapping::Size>("size"),
                           InstanceMethod<&Mapping::Sync>("sync"),
                           InstanceMethod<&Mapping::SyncAsync>("syncAsync"),
                           InstanceMethod<&Mapping::Unmap>("unmap"),
                       });
  }

  // new Mapping(path, size, create, readonly, lock)
  explicit Mapping(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Mapping>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 5 || !info[0].IsString() || !info[1].IsNumber()) {
      Napi::TypeError::New(env, "Mapping(path, size, create, readonly, lock)").ThrowAsJavaScriptException();
      return;
    }
    std::string path = info[0].As<Napi::String>().Utf8Value();
    double sizeD = info[1].As<Napi::Number>().DoubleValue();
    bool create = info[2].ToBoolean().Value();
    bool readonly = info[3].ToBoolean().Value();
    bool wantLock = info[4].ToBoolean().Value();
    if (!(sizeD > 0) || sizeD > 1099511627776.0 || sizeD != static_cast<double>(static_cast<size_t>(sizeD))) {
      ErrnoError(env, EINVAL, "mmap", path, "size must be a positive integer").ThrowAsJavaScriptException();
      return;
    }
    size_t size = static_cast<size_t>(sizeD);
    if (create && readonly) {
      ErrnoError(env, EINVAL, "open", path, "cannot create read-only").ThrowAsJavaScriptException();
      return;
    }

    int flags = readonly ? O_RDONLY : O_RDWR;
    if (create) flags |= O_CREAT | O_EXCL;
    int fd = open(path.c_str(), flags | O_CLOEXEC, 0644);
    if (fd < 0) {
      ErrnoError(env, errno, "open", path).ThrowAsJavaScriptException();
      return;
    }
    // From here on, a failure must not leave a half-made file behind.
    auto fail = [&](int err, const char* syscall, const std::string& detail) {
      close(fd);
      if (create) unlink(path.c_str());
      ErrnoError(env, err, syscall, path, detail).ThrowAsJavaScriptException();
    };
    if (wantLock && flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      fail(err, "flock", "another process has it open for writing");
      return;
    }
    if (create) {
      if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
        fail(errno, "ftruncate", "");
        return;
      }
    } else {
      struct stat st;
      if (fstat(fd, &st) != 0) {
        fail(errno, "fstat", "");
        return;
      }
      if (static_cast<size_t>(st.st_size) != size) {
        fail(EINVAL, "fstat",
             "file is " + std::to_string(st.st_size) + " bytes, layout needs " + std::to_string(size));
        return;
      }
    }
    int prot = readonly ? PROT_READ : (PROT_READ | PROT_WRITE);
    void* addr = mmap(nullptr, size, prot, MAP_SHARED, fd, 0);
    if (addr == MAP_FAILED) {
      fail(errno, "mmap", "");
      return;
    }
    state_ = std::make_shared<MapState>();
    state_->addr = addr;
    state_->length = size;
    state_->path = path;
    if (wantLock) {
      state_->fd = fd;
    } else {
      close(fd);
    }
    Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, addr, size, FinalizeBuffer, new StatePtr(state_));
    buffer_ = Napi::Persistent(ab);
  }

  ~Mapping() override { buffer_.Reset(); }

 private:
  Napi::Value Buffer(const Napi::CallbackInfo& info) {
    if (buffer_.IsEmpty()) return info.Env().Undefined();
    return buffer_.Value();
  }
  Napi::Value Mapped(const Napi::CallbackInfo& info) {
    std::lock_guard<std::mutex> lock(state_->mu);
    return Napi::Boolean::New(info.Env(), state_->addr != nullptr);
  }
  Napi::Value Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), state_->length); }

  bool RangeArgs(const Napi::CallbackInfo& info, size_t* start, size_t* len) {
    Napi::Env env = info.Env();
    double off = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
    double n = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue()
                                                       : static_cast<double>(state_->length) - off;
    if (!AlignRange(*state_, off, n, start, len)) {
      ErrnoError(env, EINVAL, "msync", state_->path, "range outside the mapping").ThrowAsJavaScriptException();
      return false;
    }
    return true;
  }

  Napi::Value Sync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    size_t start = 0, len = 0;
    if (!RangeArgs(info, &start, &len)) return env.Undefined();
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->addr == nullptr) {
      ErrnoError(env, EBADF, "msync", state_->path, "unmapped").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    if (len > 0 && msync(static_cast<char*>(state_->addr) + start, len, MS_SYNC) != 0) {
      ErrnoError(env, errno, "msync", state_->path).ThrowAsJavaScriptException();
    }
    return env.Undefined();
  }

  Napi::Value SyncAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    size_t start = 0, len = 0;
    if (!RangeArgs(info, &start, &len)) return env.Undefined();
    auto* worker = new SyncWorker(env, state_, start, len);
    Napi::Promise p = worker->Promise();
    worker->Queue();
    return p;
  }

  Napi::Value Unmap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (state_->addr == nullptr) return env.Undefined();
      state_->ReleaseLocked();
    }
    if (!buffer_.IsEmpty()) {
      Napi::ArrayBuffer ab = buffer_.Value();
      if (!ab.IsDetached()) ab.Detach();
      buffer_.Reset();
    }
    return env.Undefined();
  }

  StatePtr state_;
  Napi::Reference<Napi::ArrayBuffer> buffer_;
};

Napi::Object InitModule(Napi::Env env, Napi::Object exports) {
  exports.Set("Mapping", Mapping::Init(env));
  exports.Set("pageSize", Napi::Number::New(env, static_cast<double>(sysconf(_SC_PAGESIZE))));
  return exports;
}

}  // namespace

NODE_API_MODULE(hsx_mmap, InitModule)
