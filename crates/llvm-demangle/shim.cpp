// A C entry point to LLVM's Itanium demangler (vendor/llvm/Demangle, LLVM
// 19.1.7, Apache-2.0 WITH LLVM-exception: vendor/LICENSE.TXT), the one
// llvm-symbolizer and llvm-cxxfilt print names with.
//
// Built without exceptions or RTTI and without the C++ runtime library:
// the binaries that link it must not need libstdc++ at run time (the deploy
// image has nothing but them). What the header needs from the runtime is
// defined at the end of this file.

// Every standard header the demangler's headers include, first: the
// `realloc` macro below must rename only the demangler's calls.
#include <algorithm>
#include <array>
#include <cassert>
#include <cctype>
#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string_view>
#include <type_traits>
#include <utility>

// The longest text the shim lets the demangler print. Substitutions
// (S_, S0_, ...) name earlier parts of a name, so printed text can double
// with every few bytes of a mangled name: `_Z1f1A` followed by 22
// `PFvS<n>_S<n>_E` (230 bytes) prints 109 MB, 30 of them (310 bytes) would
// print 28 GB, and the demangler grows its buffer without a limit (then
// aborts when realloc fails). 1 MiB is a thousand times the longest name
// given to it (MAX_NAME_LEN in lib.rs); the cpp_demangle crate, which
// takes what this one refuses, stops at 13.6 MB.
constexpr size_t MaxPrinted = size_t(1) << 20;

namespace {
// Where the current thread's print goes back to when it would pass
// MaxPrinted (see print_bounded); null outside a print.
thread_local std::jmp_buf *PrintEscape = nullptr;
} // namespace

// The demangler's headers call `std::realloc` to grow their buffers: its
// output (OutputBuffer::grow) and, while parsing, its vectors. Renamed to
// this, which refuses to grow a buffer past MaxPrinted while printing.
namespace std {
void *leakd_demangle_realloc(void *p, size_t n) {
  if (n > MaxPrinted && PrintEscape != nullptr)
    std::longjmp(*PrintEscape, 1);
  return std::realloc(p, n);
}
} // namespace std
#define realloc leakd_demangle_realloc
#include "llvm/Demangle/ItaniumDemangle.h"
#undef realloc

using namespace llvm::itanium_demangle;

namespace {

// The node allocator of LLVM's ItaniumDemangle.cpp (DefaultAllocator), which
// is not in the headers: a bump allocator whose first block lives in the
// parser itself, on the stack, so that most names allocate nothing for their
// syntax tree.
class BumpAllocator {
  struct Block {
    Block *Next;
    size_t Used;
  };
  static constexpr size_t BlockSize = 4096;
  static constexpr size_t Usable = BlockSize - sizeof(Block);

  alignas(long double) char First[BlockSize];
  Block *Blocks;

  void *fresh(size_t Bytes, bool Whole) {
    void *P = std::malloc(Whole ? sizeof(Block) + Bytes : BlockSize);
    if (P == nullptr)
      std::abort();
    if (Whole) {
      // A block of its own, kept behind the current one.
      Blocks->Next = new (P) Block{Blocks->Next, 0};
      return static_cast<Block *>(P) + 1;
    }
    Blocks = new (P) Block{Blocks, 0};
    return nullptr;
  }

public:
  BumpAllocator() : Blocks(new (First) Block{nullptr, 0}) {}
  BumpAllocator(const BumpAllocator &) = delete;
  BumpAllocator &operator=(const BumpAllocator &) = delete;
  ~BumpAllocator() {
    while (Blocks != nullptr) {
      Block *B = Blocks;
      Blocks = B->Next;
      if (reinterpret_cast<char *>(B) != First)
        std::free(B);
    }
  }

  void *allocate(size_t N) {
    N = (N + 15u) & ~size_t(15u);
    if (N + Blocks->Used >= Usable) {
      if (N > Usable)
        return fresh(N, true);
      fresh(0, false);
    }
    Blocks->Used += N;
    return reinterpret_cast<char *>(Blocks + 1) + Blocks->Used - N;
  }
};

class NodeAllocator {
  BumpAllocator Alloc;

public:
  void reset() {}
  template <typename T, typename... Args> T *makeNode(Args &&...args) {
    return new (Alloc.allocate(sizeof(T))) T(std::forward<Args>(args)...);
  }
  void *allocateNodeArray(size_t N) {
    return Alloc.allocate(sizeof(Node *) * N);
  }
};

using Demangler = ManglingParser<NodeAllocator>;

} // namespace

// The one function of LLVM's ItaniumDemangle.cpp the header declares and
// uses: skips a local name's discriminator.
// <discriminator> := _ <digit> | __ <number> _ ; extension: digits at the end.
const char *llvm::itanium_demangle::parse_discriminator(const char *first,
                                                        const char *last) {
  if (first == last)
    return first;
  if (*first == '_') {
    const char *t = first + 1;
    if (t != last) {
      if (std::isdigit(static_cast<unsigned char>(*t)))
        return t + 1;
      if (*t == '_') {
        for (++t; t != last && std::isdigit(static_cast<unsigned char>(*t)); ++t)
          ;
        if (t != last && *t == '_')
          return t + 1;
      }
    }
  } else if (std::isdigit(static_cast<unsigned char>(*first))) {
    const char *t = first + 1;
    while (t != last && std::isdigit(static_cast<unsigned char>(*t)))
      ++t;
    if (t == last)
      return last;
  }
  return first;
}

// Print AST into OB; false (OB's text incomplete) when the text would pass
// MaxPrinted. The jump back skips only the frames of AST->print: they
// hold no resource (printing allocates nothing but OB's buffer, which the
// caller frees), and the state their scoped overrides would restore
// belongs to OB and to the nodes, both discarded after a false. The
// parser and its allocator live in the caller, destroyed as usual.
static bool print_bounded(Node *AST, OutputBuffer &OB) {
  std::jmp_buf Escape;
  if (setjmp(Escape) != 0) {
    PrintEscape = nullptr;
    return false;
  }
  PrintEscape = &Escape;
  AST->print(OB);
  PrintEscape = nullptr;
  return true;
}

// The readable form of the Itanium-mangled NAME (LEN bytes, no NUL needed),
// as llvm::itaniumDemangle (with parameters) writes it: a malloc'd string of
// *OUT_LEN bytes (not NUL-terminated) for leakd_itanium_free, or NULL when
// the name is not one (or is empty).
extern "C" char *leakd_itanium_demangle(const char *name, size_t len,
                                        size_t *out_len) {
  *out_len = 0;
  if (name == nullptr || len == 0)
    return nullptr;
  Demangler Parser(name, name + len);
  Node *AST = Parser.parse(/*ParseParams=*/true);
  if (AST == nullptr)
    return nullptr;
  OutputBuffer OB;
  if (!print_bounded(AST, OB)) {
    // Its buffer is as it was before the refused realloc.
    std::free(OB.getBuffer());
    return nullptr;
  }
  // An empty result allocates nothing: report it as a failure.
  if (OB.getBuffer() == nullptr)
    return nullptr;
  *out_len = OB.getCurrentPosition();
  return OB.getBuffer();
}

extern "C" void leakd_itanium_free(char *buf) { std::free(buf); }


// The syntax tree's nodes have a virtual destructor, whose deleting variant
// names the sized operator delete of the C++ runtime, which is not linked.
// It is never called (the nodes live in the bump allocator and are never
// deleted); weak, so that a C++ runtime linked beside it wins.
__attribute__((weak)) void operator delete(void *p, size_t) noexcept {
  std::free(p);
}
