# Writes OUTPUT: a C++ file defining switchyard::api::openapi_yaml() that returns INPUT's text.
file(READ "${INPUT}" content)
string(FIND "${content}" ")openapi\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw-string delimiter )openapi\"")
endif()
# A raw string literal has an implementation limit on length; split into 16 KiB pieces.
string(LENGTH "${content}" length)
set(pieces "")
set(offset 0)
while(offset LESS length)
  string(SUBSTRING "${content}" ${offset} 16384 piece)
  string(APPEND pieces "    R\"openapi(${piece})openapi\"\n")
  math(EXPR offset "${offset} + 16384")
endwhile()
file(WRITE "${OUTPUT}.tmp"
"#include \"api/openapi_text.hpp\"\n\nnamespace switchyard::api {\n\nstd::string_view openapi_yaml() noexcept {\n  static constexpr std::string_view text =\n${pieces}    ;\n  return text;\n}\n\n}  // namespace switchyard::api\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
