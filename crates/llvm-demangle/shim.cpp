// A C entry point to LLVM's Itanium demangler (vendor/llvm/Demangle, LLVM
// 19.1.7, Apache-2.0 WITH LLVM-exception: vendor/LICENSE.TXT), the one
// llvm-symbolizer and llvm-cxxfilt print names with.
//
// Built without exceptions or RTTI and without the C++ runtime library:
// the binaries that link it must not need libstdc++ at run time (the deploy
// image has nothing but them). What the header needs from the runtime is
// defined at the end of this file.

// Every standard header the vendored ones include, first: the `final`
// macro below must reach LLVM's headers only.
#include <algorithm>
#include <array>
#include <cassert>
#include <cctype>
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

// LLVM's node classes are `final`; the shim derives from each of them
// (Capped, below) to stop printing a name whose output has no end. This
// drops the keyword from the vendored headers as they are compiled here,
// without editing them: nodes are only ever made through the shim's
// allocator, so nothing else derives from them.
#define final
#include "llvm/Demangle/ItaniumDemangle.h"
#undef final

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

// The most print steps (a node printing its left or right side) per name:
// output that does not grow (empty parameter packs, repeated) must not loop
// without end either. The tests' crafted name printing 64 KiB takes under
// 64 Ki steps.
constexpr size_t MaxSteps = 1024 * 1024;

// The output buffer of one name, which has a longest (MaxOutput, given by
// the caller): a name whose output would be longer is rejected. A
// substitution (`S_`, `T_`) repeats a whole earlier part of the name, which
// may itself repeat one, so a few hundred crafted bytes can double the
// output at every step: printed, a name in a traced process's binary would
// exhaust symres's memory (LLVM's OutputBuffer aborts when realloc fails)
// and, before that, its time.
class CappedOutput : public OutputBuffer {
public:
  explicit CappedOutput(size_t MaxOutput) : MaxOutput(MaxOutput) {}
  const size_t MaxOutput;
  size_t Steps = 0;
  bool Over = false;

  // Whether printing must stop: past either limit, now or before. Once
  // over, every node returns at once: the nodes still printing only finish
  // their own loops over children, which return at once too.
  bool stop() {
    if (!Over && (getCurrentPosition() > MaxOutput || ++Steps > MaxSteps))
      Over = true;
    return Over;
  }
};

// Node T, printing nothing once its output buffer is over a limit. Every
// node is made as one (NodeAllocator::makeNode), and every print of a
// child goes through its virtual printLeft/printRight, so a walk over the
// tree stops wherever it is. Printing happens into a CappedOutput only
// (leakd_itanium_demangle).
template <typename T> class Capped : public T {
public:
  using T::T;
  void printLeft(OutputBuffer &OB) const override {
    if (!static_cast<CappedOutput &>(OB).stop())
      T::printLeft(OB);
  }
  void printRight(OutputBuffer &OB) const override {
    if (!static_cast<CappedOutput &>(OB).stop())
      T::printRight(OB);
  }
};

// A leaf, whose printLeft is private: nothing to stop.
template <>
class Capped<ExpandedSpecialSubstitution> : public ExpandedSpecialSubstitution {
public:
  using ExpandedSpecialSubstitution::ExpandedSpecialSubstitution;
};

class NodeAllocator {
  BumpAllocator Alloc;

public:
  void reset() {}
  template <typename T, typename... Args> T *makeNode(Args &&...args) {
    return new (Alloc.allocate(sizeof(Capped<T>)))
        Capped<T>(std::forward<Args>(args)...);
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

// The readable form of the Itanium-mangled NAME (LEN bytes, no NUL needed),
// as llvm::itaniumDemangle (with parameters) writes it: a malloc'd string of
// *OUT_LEN bytes (not NUL-terminated) for leakd_itanium_free, or NULL when
// the name is not one (or is empty) or its readable form would be longer
// than MAX_OUTPUT bytes.
extern "C" char *leakd_itanium_demangle(const char *name, size_t len,
                                        size_t max_output, size_t *out_len) {
  *out_len = 0;
  if (name == nullptr || len == 0)
    return nullptr;
  Demangler Parser(name, name + len);
  Node *AST = Parser.parse(/*ParseParams=*/true);
  if (AST == nullptr)
    return nullptr;
  CappedOutput OB(max_output);
  AST->print(OB);
  if (OB.Over || OB.getCurrentPosition() > max_output) {
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
