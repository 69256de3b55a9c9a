#pragma once
// Readers for the golden tables under test/data (Markdown files whose data sits in
// fenced code blocks), and small helpers shared by the unit tests of the pure layers.
//
// A code block is read as a list of blocks: a line that starts in column 0 opens a
// block (its header), and the indented lines after it belong to that block. The
// files are parsed at run time so that every case they hold is checked.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace pcx::test {

/// Lists of groups, each an ordered list of global ranks.
using Groups = std::vector<std::vector<int>>;

/// The whole text of a file of the conformance directory (test/data).
inline std::string read_golden_file(std::string_view name) {
  const std::string path = fmt::format("{}/{}", PCX_CONFORMANCE_DIR, name);
  std::ifstream in(path);
  if (!in) throw std::runtime_error(fmt::format("cannot open golden file {}", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

/// One case of a code block: its unindented header line and the indented lines under it.
struct GoldenBlock {
  std::string header;
  std::vector<std::string> lines;  ///< With the indentation removed.
};

/// A "### " section of a golden file; id is its first word without a trailing '.'
/// ("G2"); text before the first heading forms a section with an empty id.
struct GoldenSection {
  std::string id;
  std::string heading;
  std::vector<GoldenBlock> blocks;
};

inline std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\r");
  return s.substr(first, last - first + 1);
}

inline std::vector<GoldenSection> parse_golden_markdown(std::string_view text) {
  std::vector<GoldenSection> sections(1);
  bool in_code = false;
  std::size_t begin = 0;
  while (begin < text.size()) {
    std::size_t end = text.find('\n', begin);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(begin, end - begin);
    begin = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.starts_with("```")) {
      in_code = !in_code;
      continue;
    }
    if (!in_code) {
      if (line.starts_with("### ")) {
        GoldenSection section;
        section.heading = std::string(trim(line.substr(4)));
        std::string_view id = section.heading;
        id = id.substr(0, id.find(' '));
        if (id.ends_with('.')) id.remove_suffix(1);
        section.id = std::string(id);
        sections.push_back(std::move(section));
      }
      continue;
    }
    if (trim(line).empty()) continue;
    auto& blocks = sections.back().blocks;
    if (line.front() != ' ' && line.front() != '\t') {
      blocks.push_back({std::string(line), {}});
    } else {
      if (blocks.empty()) throw std::runtime_error(fmt::format("indented line before any case: '{}'", line));
      blocks.back().lines.emplace_back(trim(line));
    }
  }
  return sections;
}

/// The section called @p id; throws if the file has none.
inline const GoldenSection& golden_section(const std::vector<GoldenSection>& sections, std::string_view id) {
  const auto it = std::ranges::find(sections, id, &GoldenSection::id);
  if (it == sections.end()) throw std::runtime_error(fmt::format("the golden file has no section {}", id));
  return *it;
}

/// A decimal integer, the whole of @p text.
inline int parse_int(std::string_view text) {
  text = trim(text);
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) {
    throw std::runtime_error(fmt::format("'{}' is not an integer", text));
  }
  return value;
}

namespace detail {

inline void skip_spaces(std::string_view text, std::size_t& pos) {
  while (pos < text.size() && (text[pos] == ' ' || text[pos] == ',')) ++pos;
}

inline void expect(std::string_view text, std::size_t& pos, char c) {
  skip_spaces(text, pos);
  if (pos >= text.size() || text[pos] != c) {
    throw std::runtime_error(fmt::format("expected '{}' at offset {} of '{}'", c, pos, text));
  }
  ++pos;
}

inline std::vector<int> read_int_list(std::string_view text, std::size_t& pos) {
  expect(text, pos, '[');
  std::vector<int> values;
  for (;;) {
    skip_spaces(text, pos);
    if (pos < text.size() && text[pos] == ']') {
      ++pos;
      return values;
    }
    std::size_t end = pos;
    while (end < text.size() && (text[end] == '-' || (text[end] >= '0' && text[end] <= '9'))) ++end;
    if (end == pos) throw std::runtime_error(fmt::format("expected a number at offset {} of '{}'", pos, text));
    values.push_back(parse_int(text.substr(pos, end - pos)));
    pos = end;
  }
}

}  // namespace detail

/// "[0, 1, 2]" → {0, 1, 2}.
inline std::vector<int> parse_int_list(std::string_view text) {
  std::size_t pos = 0;
  auto values = detail::read_int_list(text, pos);
  if (!trim(text.substr(pos)).empty()) throw std::runtime_error(fmt::format("trailing text in '{}'", text));
  return values;
}

/// "[[0, 1], [2, 3]]" → {{0, 1}, {2, 3}}.
inline Groups parse_groups(std::string_view text) {
  std::size_t pos = 0;
  detail::expect(text, pos, '[');
  Groups groups;
  for (;;) {
    detail::skip_spaces(text, pos);
    if (pos < text.size() && text[pos] == ']') {
      ++pos;
      break;
    }
    groups.push_back(detail::read_int_list(text, pos));
  }
  if (!trim(text.substr(pos)).empty()) throw std::runtime_error(fmt::format("trailing text in '{}'", text));
  return groups;
}

/// The fields of a line such as "r3  ep_group=[2, 3]  ep_rank=1  x=None": a name
/// before each '=', a value that is a bracketed list or a word. A first word with no
/// '=' (like "r3") is stored under the name "".
inline std::map<std::string, std::string, std::less<>> parse_fields(std::string_view line) {
  std::map<std::string, std::string, std::less<>> fields;
  std::size_t pos = 0;
  while (pos < line.size()) {
    while (pos < line.size() && line[pos] == ' ') ++pos;
    if (pos >= line.size()) break;
    std::size_t end = pos;
    while (end < line.size() && line[end] != '=' && line[end] != ' ') ++end;
    if (end >= line.size() || line[end] == ' ') {
      fields[""] = std::string(line.substr(pos, end - pos));
      pos = end;
      continue;
    }
    const std::string name(line.substr(pos, end - pos));
    pos = end + 1;
    if (pos < line.size() && line[pos] == '[') {
      int depth = 0;
      end = pos;
      do {
        if (line[end] == '[') ++depth;
        if (line[end] == ']') --depth;
        ++end;
      } while (end < line.size() && depth > 0);
    } else {
      end = line.find(' ', pos);
      if (end == std::string_view::npos) end = line.size();
    }
    fields[name] = std::string(line.substr(pos, end - pos));
    pos = end;
  }
  return fields;
}

/// The field @p name of @p fields; throws naming the line's fields if it is missing.
inline const std::string& field(const std::map<std::string, std::string, std::less<>>& fields, std::string_view name) {
  const auto it = fields.find(name);
  if (it == fields.end()) throw std::runtime_error(fmt::format("no field '{}' in {}", name, fields));
  return it->second;
}

/// The groups in a canonical order (sorted lexicographically); each group's own member
/// order is kept, so two listings compare equal exactly when they hold the same groups.
inline Groups as_set(Groups groups) {
  std::ranges::sort(groups);
  return groups;
}

/// Text for a test message: "[[0, 1], [2, 3]]".
inline std::string show(const Groups& groups) { return fmt::format("{}", groups); }
inline std::string show(const std::vector<int>& group) { return fmt::format("{}", group); }

/// Whether @p message contains @p word.
inline bool mentions(std::string_view message, std::string_view word) {
  return message.find(word) != std::string_view::npos;
}

/// Whether @p message contains @p value as a whole number (not part of a longer one).
inline bool mentions_number(std::string_view message, long long value) {
  std::size_t pos = 0;
  while (pos < message.size()) {
    const bool negative = message[pos] == '-' && pos + 1 < message.size() && message[pos + 1] >= '0' &&
                          message[pos + 1] <= '9' && (pos == 0 || message[pos - 1] < '0' || message[pos - 1] > '9');
    const bool digit = message[pos] >= '0' && message[pos] <= '9';
    if (!negative && !digit) {
      ++pos;
      continue;
    }
    std::size_t end = pos + (negative ? 1 : 0);
    while (end < message.size() && message[end] >= '0' && message[end] <= '9') ++end;
    long long number = 0;
    const auto [ptr, error] = std::from_chars(message.data() + pos, message.data() + end, number);
    if (error == std::errc() && ptr == message.data() + end && number == value) return true;
    pos = end;
  }
  return false;
}

/// A predicate for BOOST_CHECK_EXCEPTION: the message contains every word of @p words
/// and every number of @p numbers (as whole numbers).
inline auto message_names(std::vector<std::string> words, std::vector<long long> numbers = {}) {
  return [words = std::move(words), numbers = std::move(numbers)](const std::exception& error) {
    const std::string_view what = error.what();
    bool ok = true;
    for (const auto& word : words) ok = ok && mentions(what, word);
    for (const long long number : numbers) ok = ok && mentions_number(what, number);
    if (!ok) {
      std::fprintf(stderr, "error message '%s' does not name all of [%s] / [%s]\n", error.what(),
                   fmt::format("{}", fmt::join(words, ", ")).c_str(),
                   fmt::format("{}", fmt::join(numbers, ", ")).c_str());
    }
    return ok;
  };
}

}  // namespace pcx::test
