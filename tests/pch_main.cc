// The target that holds the test binaries' precompiled header (tests/CMakeLists.txt);
// the program itself does nothing.
int main() { return 0; }
