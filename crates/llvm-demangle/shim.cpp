// A C entry point to LLVM's Itanium demangler (vendor/llvm/Demangle, LLVM
// 19.1.7, Apache-2.0 WITH LLVM-exception: vendor/LICENSE.TXT), the one
// llvm-symbolizer and llvm-cxxfilt print names with.
//
// Built without exceptions or RTTI and without the C++ runtime library:
// the binaries that link it must not need libstdc++ at run time (the deploy
// image has nothing but them). What the header needs from the runtime is
// defined at the end of this file.

#include "llvm/Demangle/ItaniumDemangle.h"

#include <cstddef>
#include <cstdlib>

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
  AST->print(OB);
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
