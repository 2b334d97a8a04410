/* NCCL of the vitrine CUDA emulator (docs/CUDA.md): the communicators of one ncclCommInitAll form
 * a clique; each rank's n-th collective is matched with the other ranks' n-th, and when the last
 * rank has posted it the data moves as host copies between the emulated devices. A call outside
 * a group waits until every rank has posted (other host threads, as with NCCL); calls inside
 * ncclGroupStart/End are posted at ncclGroupEnd, which waits for all of them. A wait that lasts
 * VT_EMU_NCCL_TIMEOUT_MS (default 5000) is reported as a hang (ncclInvalidUsage). */
#include <nccl.h>
#include <stdlib.h>
#include <string.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "internal.h"

namespace {

enum { COLL_BROADCAST = 0 };

struct post {
  const void *send;
  void *recv;
};

struct collective {
  int type = -1;
  size_t bytes = 0;
  int root = 0;
  int posted = 0, consumed = 0;
  bool done = false;
  ncclResult_t result = ncclSuccess;
  std::vector<post> posts;
};

struct clique {
  std::mutex mu;
  std::condition_variable cv;
  int nranks;
  std::vector<int> devices;
  std::vector<uint64_t> next; /* each rank's next collective number */
  std::map<uint64_t, collective> pending;
  bool broken = false;
};

struct queued {
  ncclComm_t comm;
  int type;
  const void *send;
  void *recv;
  size_t bytes;
  int root;
};

constexpr uint32_t COMM_MAGIC = 0x4e43434c;
thread_local int tl_depth;
thread_local std::vector<queued> tl_group;

size_t type_size(ncclDataType_t t) {
  switch (t) {
  case ncclInt8:
  case ncclUint8:
  case ncclFloat8e4m3:
  case ncclFloat8e5m2:
    return 1;
  case ncclFloat16:
  case ncclBfloat16:
    return 2;
  case ncclInt32:
  case ncclUint32:
  case ncclFloat32:
    return 4;
  case ncclInt64:
  case ncclUint64:
  case ncclFloat64:
    return 8;
  default:
    return 0;
  }
}

long timeout_ms(void) {
  const char *s = getenv("VT_EMU_NCCL_TIMEOUT_MS");
  return s != nullptr && atol(s) > 0 ? atol(s) : 5000;
}

} // namespace

struct ncclComm {
  uint32_t magic;
  int rank, nranks, device;
  std::shared_ptr<clique> cl;
};

namespace {

bool valid(const ncclComm *c) { return c != nullptr && c->magic == COMM_MAGIC; }

/* Moves the data of a collective every rank has posted (under the clique's lock). */
void execute(collective &c) {
  if (c.type == COLL_BROADCAST) {
    const void *src = c.posts[c.root].send;
    for (const post &p : c.posts) {
      if (p.recv != src) {
        memmove(p.recv, src, c.bytes);
      }
    }
  }
  c.done = true;
  vt_emu::count(vt_emu::stats.collectives);
}

/* Posts this rank's part; returns the collective's number. */
uint64_t post_one(clique &cl, const queued &q) {
  const uint64_t seq = cl.next[q.comm->rank]++;
  collective &c = cl.pending[seq];
  if (c.posts.empty()) {
    c.type = q.type;
    c.bytes = q.bytes;
    c.root = q.root;
    c.posts.resize(cl.nranks);
  } else if (c.type != q.type || c.bytes != q.bytes || c.root != q.root) {
    vt_emu::diag("NCCL collective %llu: rank %d's call (type %d, %zu bytes, root %d) does not "
                 "match the other ranks' (type %d, %zu bytes, root %d) -> ncclInvalidUsage",
                 (unsigned long long)seq, q.comm->rank, q.type, q.bytes, q.root, c.type, c.bytes,
                 c.root);
    c.result = ncclInvalidUsage;
  }
  c.posts[q.comm->rank] = post{q.send, q.recv};
  if (++c.posted == cl.nranks) {
    if (c.result == ncclSuccess) {
      execute(c);
    }
    c.done = true;
    cl.cv.notify_all();
  }
  return seq;
}

ncclResult_t wait_one(clique &cl, std::unique_lock<std::mutex> &lock, uint64_t seq, int rank) {
  collective &c = cl.pending[seq];
  if (!cl.cv.wait_for(lock, std::chrono::milliseconds(timeout_ms()),
                      [&] { return c.done || cl.broken; })) {
    vt_emu::diag("NCCL collective %llu: rank %d waited %ld ms for the other ranks (%d of %d "
                 "posted; a single host thread must post every rank between ncclGroupStart and "
                 "ncclGroupEnd) -> ncclInvalidUsage",
                 (unsigned long long)seq, rank, timeout_ms(), c.posted, cl.nranks);
    cl.broken = true;
    cl.cv.notify_all();
    return ncclInvalidUsage;
  }
  if (!c.done) {
    return ncclInvalidUsage;
  }
  const ncclResult_t r = c.result;
  if (++c.consumed == cl.nranks) {
    cl.pending.erase(seq);
  }
  return r;
}

/* Posts the calls and waits for them, one clique at a time. */
ncclResult_t run(const std::vector<queued> &calls) {
  std::vector<std::pair<uint64_t, const queued *>> seqs;
  for (const queued &q : calls) {
    clique &cl = *q.comm->cl;
    std::lock_guard<std::mutex> lock(cl.mu);
    if (cl.broken) {
      return ncclInvalidUsage;
    }
    seqs.emplace_back(post_one(cl, q), &q);
  }
  ncclResult_t result = ncclSuccess;
  for (const auto &s : seqs) {
    clique &cl = *s.second->comm->cl;
    std::unique_lock<std::mutex> lock(cl.mu);
    const ncclResult_t r = wait_one(cl, lock, s.first, s.second->comm->rank);
    result = result == ncclSuccess ? r : result;
  }
  return result;
}

ncclResult_t enqueue(const queued &q, cudaStream_t stream, const char *what) {
  if (!valid(q.comm)) {
    return ncclInvalidArgument;
  }
  const int dev = q.comm->device;
  if (vt_emu::sticky(dev) != cudaSuccess) {
    return ncclUnhandledCudaError;
  }
  if (stream != nullptr && stream != cudaStreamLegacy && stream != cudaStreamPerThread) {
    vt_emu::stream *s = nullptr;
    if (vt_emu::resolve_stream(stream, &s) != cudaSuccess) {
      return ncclInvalidArgument;
    }
    if (vt_emu::stream_device(s) != dev) {
      vt_emu::diag("%s: rank %d's stream belongs to device %d, its communicator to device %d -> "
                   "ncclInvalidArgument", what, q.comm->rank, vt_emu::stream_device(s), dev);
      return ncclInvalidArgument;
    }
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    (void)cudaStreamIsCapturing(stream, &st);
    if (st != cudaStreamCaptureStatusNone) {
      vt_emu::diag("%s under stream capture: not emulated -> ncclInvalidUsage", what);
      return ncclInvalidUsage;
    }
  }
  if (q.bytes > 0) {
    if ((q.comm->rank == q.root &&
         vt_emu::check_device_range(q.send, q.bytes, dev, what, "send") != cudaSuccess) ||
        vt_emu::check_device_range(q.recv, q.bytes, dev, what, "receive") != cudaSuccess) {
      (void)cudaGetLastError(); // an NCCL argument error, not a CUDA one
      return ncclInvalidArgument;
    }
  }
  if (tl_depth > 0) {
    tl_group.push_back(q);
    return ncclSuccess;
  }
  return run({q});
}

} // namespace

extern "C" {

ncclResult_t ncclGetVersion(int *version) {
  if (version == nullptr) {
    return ncclInvalidArgument;
  }
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r) {
  switch (r) {
  case ncclSuccess: return "no error";
  case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
  case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
  case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
  case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
  case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
  case ncclRemoteError: return "remote process exited or there was a network error";
  case ncclInProgress: return "NCCL operation in progress";
  default: return "unknown result code";
  }
}

ncclResult_t ncclCommInitAll(ncclComm_t *comms, int ndev, const int *devlist) {
  if (comms == nullptr || ndev < 1) {
    return ncclInvalidArgument;
  }
  auto cl = std::make_shared<clique>();
  cl->nranks = ndev;
  cl->next.assign(ndev, 0);
  for (int i = 0; i < ndev; i++) {
    const int d = devlist != nullptr ? devlist[i] : i;
    if (d < 0 || d >= vt_emu::cfg().devices) {
      return ncclInvalidArgument;
    }
    for (int j = 0; j < i; j++) {
      if (cl->devices[j] == d) {
        vt_emu::diag("ncclCommInitAll: device %d listed twice -> ncclInvalidUsage", d);
        return ncclInvalidUsage;
      }
    }
    cl->devices.push_back(d);
  }
  for (int i = 0; i < ndev; i++) {
    comms[i] = new ncclComm{COMM_MAGIC, i, ndev, cl->devices[i], cl};
  }
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) {
    return ncclSuccess;
  }
  if (!valid(comm)) {
    return ncclInvalidArgument;
  }
  comm->magic = 0;
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int *count) {
  if (!valid(comm) || count == nullptr) {
    return ncclInvalidArgument;
  }
  *count = comm->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int *device) {
  if (!valid(comm) || device == nullptr) {
    return ncclInvalidArgument;
  }
  *device = comm->device;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int *rank) {
  if (!valid(comm) || rank == nullptr) {
    return ncclInvalidArgument;
  }
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart(void) {
  tl_depth++;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
  if (tl_depth == 0) {
    return ncclInvalidUsage;
  }
  if (--tl_depth > 0) {
    return ncclSuccess;
  }
  std::vector<queued> calls;
  calls.swap(tl_group);
  return run(calls);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream) {
  const size_t ts = type_size(datatype);
  if (!valid(comm) || ts == 0 || root < 0 || root >= comm->nranks ||
      (count > 0 && recvbuff == nullptr) || count > SIZE_MAX / ts) {
    return ncclInvalidArgument;
  }
  return enqueue(queued{comm, COLL_BROADCAST, sendbuff, recvbuff, count * ts, root}, stream,
                 "ncclBroadcast");
}

ncclResult_t ncclBcast(void *buff, size_t count, ncclDataType_t datatype, int root,
                       ncclComm_t comm, cudaStream_t stream) {
  return ncclBroadcast(buff, buff, count, datatype, root, comm, stream);
}

} // extern "C"
