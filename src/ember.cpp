// libember.so: the engine (src/engine) and the compiler (src/compiler) as one shared library,
// so that every registry they keep (converters, plugin creators, back ends) exists once per
// process, whoever links or loads Ember (ember._C, libember_torch.so, a C++ program, a user's
// converter or plugin library). The parts are the static libraries ember_engine and
// ember_compiler, linked whole (CMakeLists.txt); this file only gives the target a source.
