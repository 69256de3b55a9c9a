// Tests of the topology layer: ParallelConfig validation and every group kind of the
// seed (deepspeed/utils/groups.py) as a view of a rank grid.

#define BOOST_TEST_MODULE topology
#include "pcx/topology.hpp"

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <climits>
#include <cstdint>
#include <iterator>
#include <numeric>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "golden.hpp"
#include "pcx/error.hpp"
#include "spec_reference.hpp"
#include "support/config.hpp"

namespace {

using pcx::ConfigError;
using pcx::ExpertOrder;
using pcx::GroupId;
using pcx::GroupKind;
using pcx::GroupLayout;
using pcx::ParallelConfig;
using pcx::Topology;
using pcx::test::as_set;
using pcx::test::GoldenBlock;
using pcx::test::make_config;
using pcx::test::Reference;
using pcx::test::Groups;
using pcx::test::message_names;
using pcx::test::parse_groups;
using pcx::test::parse_int;
using pcx::test::parse_int_list;
using pcx::test::show;

std::size_t idx(int i) { return static_cast<std::size_t>(i); }

// The cases of one section of seed_golden.md, read from the file at run time.
std::vector<GoldenBlock> golden_blocks(std::string_view section) {
  const auto sections = pcx::test::parse_golden_markdown(pcx::test::read_golden_file("seed_golden.md"));
  return pcx::test::golden_section(sections, section).blocks;
}

GroupId expert(int ep) { return {GroupKind::expert_parallel, ep}; }
GroupId expert_data(int ep) { return {GroupKind::expert_data_parallel, ep}; }
GroupId kind(GroupKind k) { return {k, 0}; }

Groups concat(Groups a, const Groups& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// "[W16_tp2_ep4_pp1_ED_megatron] rest" → key "W16_tp2_ep4_pp1_ED_megatron", rest "rest".
std::pair<std::string, std::string> bracket_key(const std::string& header) {
  if (header.empty() || header.front() != '[') throw std::runtime_error("no [key] in: " + header);
  const auto close = header.find(']');
  if (close == std::string::npos) throw std::runtime_error("no ] in: " + header);
  return {header.substr(1, close - 1), std::string(pcx::test::trim(std::string_view(header).substr(close + 1)))};
}

std::vector<std::string> split(std::string_view text, char separator) {
  std::vector<std::string> parts;
  std::size_t begin = 0;
  for (;;) {
    const auto end = text.find(separator, begin);
    parts.emplace_back(text.substr(begin, end == std::string_view::npos ? std::string_view::npos : end - begin));
    if (end == std::string_view::npos) return parts;
    begin = end + 1;
  }
}

// The number after @p prefix in a key token ("tp2" → 2), or @p fallback if no token has it.
int key_number(const std::string& key, std::string_view prefix, std::optional<int> fallback = std::nullopt) {
  for (const auto& token : split(key, '_')) {
    if (token.size() > prefix.size() && token.starts_with(prefix) &&
        std::all_of(token.begin() + static_cast<std::ptrdiff_t>(prefix.size()), token.end(),
                    [](char c) { return c >= '0' && c <= '9'; })) {
      return parse_int(std::string_view(token).substr(prefix.size()));
    }
  }
  if (fallback) return *fallback;
  throw std::runtime_error(fmt::format("key '{}' has no '{}' number", key, prefix));
}

bool key_has(const std::string& key, std::string_view token) {
  const auto tokens = split(key, '_');
  return std::ranges::find(tokens, token) != tokens.end();
}

bool is_error_block(const GoldenBlock& block) {
  return block.header.find("->") != std::string::npos ||
         (!block.lines.empty() && block.lines.front().starts_with("->"));
}

bool consecutive(const std::vector<int>& group) {
  for (std::size_t i = 1; i < group.size(); ++i) {
    if (group[i] != group[i - 1] + 1) return false;
  }
  return true;
}


}  // namespace

// ---------------------------------------------------------------------------------------------
// Golden data from the seed (test/data/seed_golden.md).

BOOST_AUTO_TEST_SUITE(seed_golden_tables)

// G2: _get_expert_parallel_ranks(world, tp, ep, pp, use_data_before_expert_parallel_).
BOOST_AUTO_TEST_CASE(expert_parallel_ranks_match_the_seed_g2) {
  int cases = 0;
  int errors = 0;
  for (const GoldenBlock& block : golden_blocks("G2")) {
    BOOST_TEST_CONTEXT("G2 " << block.header) {
      const auto f = pcx::test::parse_fields(block.header);
      const std::string& data_first = pcx::test::field(f, "D+E");
      BOOST_TEST_REQUIRE((data_first == "True" || data_first == "False"));
      const int ep = parse_int(pcx::test::field(f, "ep"));
      const ParallelConfig c = make_config(parse_int(pcx::test::field(f, "W")), parse_int(pcx::test::field(f, "tp")),
                                      parse_int(pcx::test::field(f, "pp")), {ep},
                                      data_first == "True" ? ExpertOrder::data_first : ExpertOrder::expert_first);
      if (is_error_block(block)) {
        BOOST_TEST(block.lines.front().find("AssertionError") != std::string::npos);
        BOOST_CHECK_THROW(pcx::validate(c), ConfigError);
        BOOST_CHECK_THROW(Topology{c}, ConfigError);
        ++errors;
      } else {
        std::optional<Groups> seed_ep;
        std::optional<Groups> seed_edp;
        for (const std::string& line : block.lines) {
          const auto eq = line.find('=');
          BOOST_TEST_REQUIRE(eq != std::string::npos);
          const std::string_view name = pcx::test::trim(std::string_view(line).substr(0, eq));
          const Groups groups = parse_groups(std::string_view(line).substr(eq + 1));
          if (name == "ep") seed_ep = groups;
          if (name == "edp") seed_edp = groups;
        }
        BOOST_TEST_REQUIRE(seed_ep.has_value());
        BOOST_TEST_REQUIRE(seed_edp.has_value());
        const Topology topology(c);
        BOOST_TEST(show(as_set(topology.layout(expert(ep)).groups())) == show(as_set(*seed_ep)));
        BOOST_TEST(show(as_set(topology.layout(expert_data(ep)).groups())) == show(as_set(*seed_edp)));
      }
      ++cases;
    }
  }
  BOOST_TEST_MESSAGE("G2: " << cases << " cases (" << errors << " errors)");
  BOOST_TEST(cases > 0);
  BOOST_TEST(errors > 0);
}

namespace {

struct ExpertCaseCounts {
  int cases = 0;
  int errors = 0;
  int ranks = 0;
  int strided_cases = 0;
  int seed_src_differs = 0;  // ranks of strided cases where the seed's formula is wrong
};

// G3 and G4: per-rank expert groups, ranks and source ranks.
void check_per_rank_expert_case(const GoldenBlock& block, const ParallelConfig& c, int ep, ExpertCaseCounts& counts) {
  ++counts.cases;
  if (is_error_block(block)) {
    BOOST_CHECK_THROW(pcx::validate(c), ConfigError);
    BOOST_CHECK_THROW(Topology{c}, ConfigError);
    ++counts.errors;
    return;
  }
  const Topology topology(c);
  const GroupLayout& ep_layout = topology.layout(expert(ep));
  const GroupLayout& edp_layout = topology.layout(expert_data(ep));
  BOOST_TEST(ep_layout.group_size() == ep);
  std::vector<bool> covered(idx(c.world_size), false);
  bool strided = false;
  int differs = 0;
  for (const std::string& line : block.lines) {
    if (line.starts_with("new_group call order:")) {
      const Groups calls = parse_groups(std::string_view(line).substr(line.find(':') + 1));
      BOOST_TEST(show(as_set(concat(ep_layout.groups(), edp_layout.groups()))) == show(as_set(calls)));
      continue;
    }
    const auto f = pcx::test::parse_fields(line);
    const std::string& rank_word = pcx::test::field(f, "");
    BOOST_TEST_REQUIRE(rank_word.starts_with("r"));
    const int r = parse_int(std::string_view(rank_word).substr(1));
    BOOST_TEST_CONTEXT("rank " << r) {
      BOOST_TEST_REQUIRE(r >= 0);
      BOOST_TEST_REQUIRE(r < c.world_size);
      covered[idx(r)] = true;
      const std::vector<int> seed_ep = parse_int_list(pcx::test::field(f, "ep_group"));
      const std::vector<int> seed_edp = parse_int_list(pcx::test::field(f, "edp_group"));
      const std::vector<int> ours_ep = ep_layout.group_of(r);
      const std::vector<int> ours_edp = edp_layout.group_of(r);
      BOOST_TEST(show(ours_ep) == show(seed_ep));
      BOOST_TEST(show(ours_edp) == show(seed_edp));
      BOOST_TEST(ep_layout.group_rank(r) == parse_int(pcx::test::field(f, "ep_rank")));
      BOOST_TEST(edp_layout.group_rank(r) == parse_int(pcx::test::field(f, "edp_rank")));
      // Expert broadcast source: global rank of group rank 0 of the expert data group.
      BOOST_TEST(edp_layout.global_rank(edp_layout.colour(r), 0) == parse_int(pcx::test::field(f, "edp_bcast_src")));
      BOOST_TEST(ours_edp.front() == parse_int(pcx::test::field(f, "edp_bcast_src")));

      // Expert parallel source rank: the seed's (rank // size) * size is a bug (SPEC,
      // "Deliberate differences"); ours is the actual first member of the group.
      const int seed_formula = parse_int(pcx::test::field(f, "ep_src_rank_formula"));
      BOOST_TEST(seed_formula == r / ep * ep);  // the golden column is what we think it is
      const int ours_src = ep_layout.global_rank(ep_layout.colour(r), 0);
      BOOST_TEST(ours_src == seed_ep.front());
      BOOST_TEST(ours_src == ours_ep.front());
      if (!consecutive(seed_ep)) {
        strided = true;
        if (ours_src != seed_formula) ++differs;
      } else {
        BOOST_TEST(ours_src == seed_formula);  // the formula is right for aligned blocks
      }
      ++counts.ranks;
    }
  }
  BOOST_TEST(std::ranges::count(covered, true) == c.world_size);
  if (strided) {
    ++counts.strided_cases;
    counts.seed_src_differs += differs;
  }
}

}  // namespace

// G3: _create_expert_and_data_parallel(ep, order) with no MPU: tp = 1, pp as keyed.
BOOST_AUTO_TEST_CASE(expert_and_data_parallel_without_mpu_match_the_seed_per_rank_g3) {
  ExpertCaseCounts counts;
  for (const GoldenBlock& block : golden_blocks("G3")) {
    const std::string key = bracket_key(block.header).first;
    BOOST_TEST_CONTEXT("G3 " << key) {
      const int ep = key_number(key, "ep");
      BOOST_TEST_REQUIRE((key_has(key, "ED") || key_has(key, "DE")));
      const ParallelConfig c = make_config(key_number(key, "W"), 1, key_number(key, "pp", 1), {ep},
                                      key_has(key, "DE") ? ExpertOrder::data_first : ExpertOrder::expert_first);
      check_per_rank_expert_case(block, c, ep, counts);
    }
  }
  BOOST_TEST_MESSAGE("G3: " << counts.cases << " cases (" << counts.errors << " errors), " << counts.ranks
                            << " ranks; seed's ep source rank wrong on " << counts.seed_src_differs << " ranks of "
                            << counts.strided_cases << " strided cases");
  BOOST_TEST(counts.cases > 0);
  BOOST_TEST(counts.errors > 0);
  BOOST_TEST(counts.strided_cases > 0);
  BOOST_TEST(counts.seed_src_differs > 0);
}

// G4: _create_expert_data_and_model_parallel(ep, mpu, order). megatron and ds_grid MPUs
// give tp and pp as keyed; a legacy MPU has no pipeline size, so pp falls back to 1.
BOOST_AUTO_TEST_CASE(expert_data_and_model_parallel_with_mpu_match_the_seed_per_rank_g4) {
  ExpertCaseCounts counts;
  int legacy = 0;
  for (const GoldenBlock& block : golden_blocks("G4")) {
    const std::string key = bracket_key(block.header).first;
    BOOST_TEST_CONTEXT("G4 " << key) {
      const int ep = key_number(key, "ep");
      const bool is_legacy = key.ends_with("_legacy");
      BOOST_TEST_REQUIRE((is_legacy || key.ends_with("_megatron") || key.ends_with("_ds_grid")));
      BOOST_TEST_REQUIRE((key_has(key, "ED") || key_has(key, "DE")));
      legacy += is_legacy ? 1 : 0;
      const ParallelConfig c =
          make_config(key_number(key, "W"), key_number(key, "tp"), is_legacy ? 1 : key_number(key, "pp", 1), {ep},
                 key_has(key, "DE") ? ExpertOrder::data_first : ExpertOrder::expert_first);
      check_per_rank_expert_case(block, c, ep, counts);
    }
  }
  BOOST_TEST_MESSAGE("G4: " << counts.cases << " cases (" << legacy << " legacy), " << counts.ranks
                            << " ranks; seed's ep source rank wrong on " << counts.seed_src_differs << " ranks of "
                            << counts.strided_cases << " strided cases");
  BOOST_TEST(counts.cases > 0);
  BOOST_TEST(counts.strided_cases > 0);
  BOOST_TEST(counts.seed_src_differs > 0);
}

// G5: _create_model_parallel(mp): tensor parallel groups of size mp with pp = 1, and
// the data parallel groups; mp larger than the world is clamped.
BOOST_AUTO_TEST_CASE(model_parallel_helper_matches_the_seed_g5) {
  int cases = 0;
  int errors = 0;
  int clamped = 0;
  for (const GoldenBlock& block : golden_blocks("G5")) {
    const std::string key = bracket_key(block.header).first;
    BOOST_TEST_CONTEXT("G5 " << key) {
      ++cases;
      const int world = key_number(key, "W");
      const int mp = key_number(key, "mp");
      const ParallelConfig c = make_config(world, mp);
      if (is_error_block(block)) {
        BOOST_CHECK_EXCEPTION(pcx::validate(c), ConfigError, message_names({}, {world, mp}));
        BOOST_CHECK_THROW(Topology{c}, ConfigError);
        ++errors;
        continue;
      }
      const Topology topology(c);
      BOOST_TEST(topology.tensor_parallel_size() == std::min(mp, world));
      if (mp > world) {
        ++clamped;
        BOOST_TEST_REQUIRE(!topology.clamp_notes().empty());
        BOOST_TEST(message_names({}, {mp, world})(std::runtime_error(topology.clamp_notes().front())));
      } else {
        BOOST_TEST(topology.clamp_notes().empty());
      }
      const GroupLayout& tensor = topology.layout(kind(GroupKind::tensor_parallel));
      const GroupLayout& data = topology.layout(kind(GroupKind::data_parallel));
      for (const std::string& line : block.lines) {
        if (line.starts_with("new_group call order:")) {
          const Groups calls = parse_groups(std::string_view(line).substr(line.find(':') + 1));
          BOOST_TEST(show(as_set(concat(data.groups(), tensor.groups()))) == show(as_set(calls)));
          continue;
        }
        const auto f = pcx::test::parse_fields(line);
        const int r = parse_int(std::string_view(pcx::test::field(f, "")).substr(1));
        BOOST_TEST_CONTEXT("rank " << r) {
          BOOST_TEST(show(tensor.group_of(r)) == show(parse_int_list(pcx::test::field(f, "mp_group"))));
          BOOST_TEST(show(data.group_of(r)) == show(parse_int_list(pcx::test::field(f, "dp_group"))));
        }
      }
    }
  }
  BOOST_TEST_MESSAGE("G5: " << cases << " cases (" << errors << " errors, " << clamped << " clamped)");
  BOOST_TEST(cases > 0);
  BOOST_TEST(errors > 0);
  BOOST_TEST(clamped > 0);
}

// G6: _create_zero_param_parallel_group(hpz) and its getters.
BOOST_AUTO_TEST_CASE(zero_param_intra_groups_match_the_seed_g6) {
  int cases = 0;
  int errors = 0;
  int clamped = 0;
  for (const GoldenBlock& block : golden_blocks("G6")) {
    const std::string key = bracket_key(block.header).first;
    BOOST_TEST_CONTEXT("G6 " << key) {
      ++cases;
      const int world = key_number(key, "W");
      const int hpz = key_number(key, "hpz");
      ParallelConfig c = make_config(world);
      c.zero_hpz_size = hpz;
      if (is_error_block(block)) {
        BOOST_CHECK_EXCEPTION(pcx::validate(c), ConfigError, message_names({}, {hpz, world}));
        BOOST_CHECK_THROW(Topology{c}, ConfigError);
        ++errors;
        continue;
      }
      const Topology topology(c);
      BOOST_TEST((topology.zero_hpz_partition_size() == std::optional<int>(std::min(hpz, world))));
      if (hpz > world) {
        ++clamped;
        BOOST_TEST_REQUIRE(!topology.clamp_notes().empty());
        BOOST_TEST(message_names({}, {hpz, world})(std::runtime_error(topology.clamp_notes().front())));
      } else {
        BOOST_TEST(topology.clamp_notes().empty());
      }
      const GroupLayout& zero = topology.layout(kind(GroupKind::zero_param_intra));
      for (const std::string& line : block.lines) {
        if (line.starts_with("new_group call order:")) {
          const Groups calls = parse_groups(std::string_view(line).substr(line.find(':') + 1));
          BOOST_TEST(show(as_set(zero.groups())) == show(as_set(calls)));
          continue;
        }
        const auto f = pcx::test::parse_fields(line);
        const int r = parse_int(std::string_view(pcx::test::field(f, "")).substr(1));
        BOOST_TEST_CONTEXT("rank " << r) {
          BOOST_TEST(show(zero.group_of(r)) == show(parse_int_list(pcx::test::field(f, "group"))));
          BOOST_TEST(show(zero.group_of(r)) == show(parse_int_list(pcx::test::field(f, "ranks"))));
          BOOST_TEST(zero.group_rank(r) == parse_int(pcx::test::field(f, "rank_in_group")));
          BOOST_TEST(zero.group_size() == parse_int(pcx::test::field(f, "group_world_size")));
        }
      }
    }
  }
  BOOST_TEST_MESSAGE("G6: " << cases << " cases (" << errors << " errors, " << clamped << " clamped)");
  BOOST_TEST(cases > 0);
  BOOST_TEST(errors > 0);
  BOOST_TEST(clamped > 0);
}

// G7: _get_local_all_to_all_group() with ranks_per_node = the device count.
BOOST_AUTO_TEST_CASE(all_to_all_groups_match_the_seed_g7) {
  int cases = 0;
  int errors = 0;
  int single_node = 0;
  const std::regex entry_re(R"('(local|global)_(\d+)': (\[[^\]]*\]))");
  for (const GoldenBlock& block : golden_blocks("G7")) {
    const auto [key, rest] = bracket_key(block.header);
    BOOST_TEST_CONTEXT("G7 " << key) {
      ++cases;
      const int world = key_number(key, "W");
      const int per_node = key_number(key, "dev");
      ParallelConfig c = make_config(world);
      c.ranks_per_node = per_node;
      if (is_error_block(block)) {
        BOOST_CHECK_EXCEPTION(pcx::validate(c), ConfigError, message_names({}, {world, per_node}));
        BOOST_CHECK_THROW(Topology{c}, ConfigError);
        ++errors;
        continue;
      }
      const Topology topology(c);
      BOOST_TEST_REQUIRE(rest.starts_with("new_group order:"));
      const Groups calls = parse_groups(std::string_view(rest).substr(rest.find(':') + 1));
      BOOST_TEST_REQUIRE(block.lines.size() == 1u);
      Groups local(1);
      Groups global;
      const std::string& dict = block.lines.front();
      for (auto it = std::sregex_iterator(dict.begin(), dict.end(), entry_re); it != std::sregex_iterator(); ++it) {
        Groups& target = (*it)[1].str() == "local" ? local : global;
        const auto i = idx(parse_int((*it)[2].str()));
        if (target.size() <= i) target.resize(i + 1);
        target[i] = parse_int_list((*it)[3].str());
      }
      BOOST_TEST_REQUIRE(!local.front().empty());
      const GroupLayout& local_layout = topology.layout(kind(GroupKind::all_to_all_local));
      // local_i and global_i are groups number i (the node, the index inside a node).
      BOOST_TEST(show(local_layout.groups()) == show(local));
      if (global.empty()) {
        ++single_node;
        BOOST_CHECK_THROW(static_cast<void>(topology.layout(kind(GroupKind::all_to_all_global))), pcx::GroupNotFound);
        BOOST_TEST(std::ranges::none_of(
            topology.views(), [](const pcx::GroupView& v) { return v.id.kind == GroupKind::all_to_all_global; }));
        BOOST_TEST(show(as_set(local_layout.groups())) == show(as_set(calls)));
      } else {
        const GroupLayout& global_layout = topology.layout(kind(GroupKind::all_to_all_global));
        BOOST_TEST(show(global_layout.groups()) == show(global));
        BOOST_TEST(show(as_set(concat(local_layout.groups(), global_layout.groups()))) == show(as_set(calls)));
      }
    }
  }
  BOOST_TEST_MESSAGE("G7: " << cases << " cases (" << errors << " errors, " << single_node << " single node)");
  BOOST_TEST(cases > 0);
  BOOST_TEST(errors > 0);
  BOOST_TEST(single_node > 0);
}

// G8: the behaviours that concern layout: the defaults without an MPU, and the max expert size.
BOOST_AUTO_TEST_CASE(no_mpu_defaults_and_max_expert_size_match_the_seed_g8) {
  const std::regex rank_re(R"x("(\d+)": \{([^{}]*)\})x");
  auto json_value = [](const std::string& object, std::string_view name) {
    const std::string quoted = fmt::format("\"{}\": ", name);
    const auto at = object.find(quoted);
    if (at == std::string::npos) throw std::runtime_error(fmt::format("no {} in {}", name, object));
    const auto begin = at + quoted.size();
    const auto end = object[begin] == '[' ? object.find(']', begin) + 1 : object.find_first_of(",}", begin);
    return object.substr(begin, end - begin);
  };
  int defaults_cases = 0;
  int max_expert_cases = 0;
  for (const GoldenBlock& block : golden_blocks("G8")) {
    const auto [key, rest] = bracket_key(block.header);
    BOOST_TEST_CONTEXT("G8 " << key) {
      if (key.starts_with("no_mpu_defaults")) {
        ++defaults_cases;
        const Topology topology(make_config(key_number(key, "W")));
        const GroupLayout& data = topology.layout(kind(GroupKind::data_parallel));
        const GroupLayout& world = topology.layout(kind(GroupKind::world));
        int ranks = 0;
        for (auto it = std::sregex_iterator(rest.begin(), rest.end(), rank_re); it != std::sregex_iterator(); ++it) {
          const int r = parse_int((*it)[1].str());
          const std::string object = (*it)[2].str();
          BOOST_TEST_CONTEXT("rank " << r) {
            BOOST_TEST(show(data.group_of(r)) == show(parse_int_list(json_value(object, "dp_group"))));
            BOOST_TEST(show(data.group_of(r)) == show(world.group_of(r)));  // the world clone
            BOOST_TEST(data.group_size() == parse_int(json_value(object, "dp_world")));
            BOOST_TEST(data.group_rank(r) == parse_int(json_value(object, "dp_rank")));
            // Model parallel size without an MPU: 1 (tensor × pipeline).
            BOOST_TEST(topology.tensor_parallel_size() * topology.pipeline_parallel_size() ==
                       parse_int(json_value(object, "mp_world")));
            BOOST_TEST(topology.layout(kind(GroupKind::tensor_parallel)).group_size() ==
                       parse_int(json_value(object, "mp_world")));
            // Sequence data parallel is data parallel without an MPU; its broadcast source
            // is the global rank of its group rank 0.
            BOOST_TEST(data.group_size() == parse_int(json_value(object, "sdp_world")));
            BOOST_TEST(data.global_rank(data.colour(r), 0) == parse_int(json_value(object, "bcast_src")));
            ++ranks;
          }
        }
        BOOST_TEST(ranks == topology.world_size());
      } else if (key.starts_with("max_expert_W")) {
        ++max_expert_cases;
        std::vector<int> eps;
        for (const auto& token : split(key, '_')) {
          if (token.size() > 2 && token.starts_with("ep")) eps.push_back(parse_int(std::string_view(token).substr(2)));
        }
        BOOST_TEST_REQUIRE(!eps.empty());
        const Topology topology(make_config(key_number(key, "W"), 1, 1, eps));
        int max_size = 0;
        for (const pcx::GroupView& view : topology.views()) {
          if (view.id.kind == GroupKind::expert_parallel) max_size = std::max(max_size, view.id.expert_parallel_size);
        }
        BOOST_TEST(max_size == *std::ranges::max_element(eps));
        const GroupLayout& largest = topology.layout(expert(max_size));
        int ranks = 0;
        for (auto it = std::sregex_iterator(rest.begin(), rest.end(), rank_re); it != std::sregex_iterator(); ++it) {
          const int r = parse_int((*it)[1].str());
          const std::string object = (*it)[2].str();
          BOOST_TEST_CONTEXT("rank " << r) {
            BOOST_TEST(max_size == parse_int(json_value(object, "max")));
            BOOST_TEST(json_value(object, "name") == fmt::format("\"ep_size_{}\"", max_size));
            BOOST_TEST(show(largest.group_of(r)) == show(parse_int_list(json_value(object, "group"))));
            ++ranks;
          }
        }
        BOOST_TEST(ranks == topology.world_size());
      } else if (key == "max_expert_empty") {
        // The seed names a missing max group "ep_size_None"; we simply have no expert kinds.
        ++max_expert_cases;
        const Topology topology(make_config(8));
        BOOST_TEST(std::ranges::none_of(topology.views(), [](const pcx::GroupView& v) {
          return v.id.kind == GroupKind::expert_parallel || v.id.kind == GroupKind::expert_data_parallel;
        }));
        BOOST_CHECK_THROW(static_cast<void>(topology.layout(expert(0))), pcx::GroupNotFound);
      }
      // sp_group_no_mpu and local_a2a_called_twice concern the context, not the layout.
    }
  }
  BOOST_TEST_MESSAGE("G8: " << defaults_cases << " no-MPU default cases, " << max_expert_cases << " max expert cases");
  BOOST_TEST(defaults_cases > 0);
  BOOST_TEST(max_expert_cases > 0);
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// The seed's own docstring examples.

BOOST_AUTO_TEST_SUITE(seed_docstrings)

BOOST_AUTO_TEST_CASE(expert_model_data_example_w16_tp2_ep4_matches_the_docstring) {
  const Topology topology(make_config(16, 2, 1, {4}));
  BOOST_TEST(show(as_set(topology.layout(kind(GroupKind::tensor_parallel)).groups())) ==
             show(Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  BOOST_TEST(show(as_set(topology.layout(kind(GroupKind::data_parallel)).groups())) ==
             show(as_set({{0, 2, 4, 6, 8, 10, 12, 14}, {1, 3, 5, 7, 9, 11, 13, 15}})));
  BOOST_TEST(show(as_set(topology.layout(expert(4)).groups())) ==
             show(as_set({{0, 2, 4, 6}, {8, 10, 12, 14}, {1, 3, 5, 7}, {9, 11, 13, 15}})));
  BOOST_TEST(show(as_set(topology.layout(expert_data(4)).groups())) ==
             show(as_set({{0, 8}, {2, 10}, {4, 12}, {6, 14}, {1, 9}, {3, 11}, {5, 13}, {7, 15}})));
}

BOOST_AUTO_TEST_CASE(expert_data_example_w16_ep2_matches_the_docstring) {
  const Topology topology(make_config(16, 1, 1, {2}));
  BOOST_TEST(show(topology.layout(kind(GroupKind::data_parallel)).groups()) ==
             show(Groups{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}}));
  BOOST_TEST(show(as_set(topology.layout(expert_data(2)).groups())) ==
             show(as_set({{0, 2, 4, 6, 8, 10, 12, 14}, {1, 3, 5, 7, 9, 11, 13, 15}})));
  const Groups ep = topology.layout(expert(2)).groups();
  BOOST_TEST(ep.size() == 8u);
  for (const auto& group : {std::vector<int>{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}}) {
    BOOST_TEST((std::ranges::find(ep, group) != ep.end()), show(group) << " is an expert parallel group");
  }
}

BOOST_AUTO_TEST_CASE(zero_hpz_example_w16_hpz2_matches_the_docstring) {
  ParallelConfig c = make_config(16);
  c.zero_hpz_size = 2;
  const Topology topology(c);
  const Groups zero = topology.layout(kind(GroupKind::zero_param_intra)).groups();
  BOOST_TEST(show(zero) == show(Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}, {10, 11}, {12, 13}, {14, 15}}));
  BOOST_TEST(topology.layout(kind(GroupKind::data_parallel)).group_size() == 16);
}

BOOST_AUTO_TEST_CASE(model_parallel_example_w8_mp2_matches_the_docstring) {
  const Topology topology(make_config(8, 2));
  BOOST_TEST(show(topology.layout(kind(GroupKind::tensor_parallel)).groups()) ==
             show(Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}}));
  BOOST_TEST(show(as_set(topology.layout(kind(GroupKind::data_parallel)).groups())) ==
             show(Groups{{0, 2, 4, 6}, {1, 3, 5, 7}}));
}

BOOST_AUTO_TEST_CASE(pipeline_groups_follow_megatrons_layout) {
  // r = p*(W/pp) + d*tp + t with W=16, tp=2, pp=2: S = 8.
  const Topology topology(make_config(16, 2, 2));
  BOOST_TEST(topology.data_parallel_size() == 4);
  BOOST_TEST(show(as_set(topology.layout(kind(GroupKind::pipeline_parallel)).groups())) ==
             show(Groups{{0, 8}, {1, 9}, {2, 10}, {3, 11}, {4, 12}, {5, 13}, {6, 14}, {7, 15}}));
  BOOST_TEST(show(as_set(topology.layout(kind(GroupKind::data_parallel)).groups())) ==
             show(Groups{{0, 2, 4, 6}, {1, 3, 5, 7}, {8, 10, 12, 14}, {9, 11, 13, 15}}));
  BOOST_TEST(show(topology.layout(kind(GroupKind::world)).groups()) ==
             show(Groups{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}}));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// validate(): every rule, with the offending values in the message.

BOOST_AUTO_TEST_SUITE(validation)

namespace {

// validate() and the Topology constructor both reject @p c with a ConfigError naming the values.
void check_rejected(const ParallelConfig& c, std::vector<std::string> words, std::vector<long long> numbers) {
  BOOST_CHECK_EXCEPTION(pcx::validate(c), ConfigError, message_names(words, numbers));
  BOOST_CHECK_EXCEPTION(Topology{c}, ConfigError, message_names(words, numbers));
}

ParallelConfig with_hpz(ParallelConfig c, int hpz) {
  c.zero_hpz_size = hpz;
  return c;
}

ParallelConfig with_nodes(ParallelConfig c, int per_node) {
  c.ranks_per_node = per_node;
  return c;
}

}  // namespace

BOOST_AUTO_TEST_CASE(a_world_size_below_one_is_rejected) {
  check_rejected(make_config(0), {"world size"}, {0});
  check_rejected(make_config(-4), {"world size"}, {-4});
}

BOOST_AUTO_TEST_CASE(a_tensor_or_pipeline_size_below_one_is_rejected) {
  check_rejected(make_config(8, 0), {"tensor parallel size"}, {0});
  check_rejected(make_config(8, -2), {"tensor parallel size"}, {-2});
  check_rejected(make_config(8, 1, 0), {"pipeline parallel size"}, {0});
  check_rejected(make_config(8, 1, -1), {"pipeline parallel size"}, {-1});
}

BOOST_AUTO_TEST_CASE(a_world_not_divisible_by_tensor_times_pipeline_is_rejected) {
  check_rejected(make_config(16, 3), {"world size", "tensor parallel size"}, {16, 3});
  check_rejected(make_config(16, 2, 3), {"world size", "pipeline parallel size"}, {16, 2, 3});
  check_rejected(make_config(24, 4, 4), {"world size"}, {24, 4});
  // The tensor size is clamped to the world first; the message shows both.
  check_rejected(make_config(8, 16, 2), {"world size"}, {8, 16, 2});
}

BOOST_AUTO_TEST_CASE(a_huge_tensor_times_pipeline_does_not_overflow) {
  check_rejected(make_config(65536, 65536, 65536), {"world size"}, {65536});
  // 2^16 × 2^16 = 2^32 would wrap to 0 in 32 bits.
  check_rejected(make_config(1 << 30, 1 << 16, 1 << 16), {"world size"}, {1 << 30, 1 << 16});
  check_rejected(make_config(INT_MAX, INT_MAX, INT_MAX), {"world size"}, {INT_MAX});
  check_rejected(make_config(1 << 30, INT_MAX, 2), {"world size"}, {1 << 30, 2});
}

BOOST_AUTO_TEST_CASE(an_expert_parallel_size_below_one_is_rejected) {
  check_rejected(make_config(8, 1, 1, {0}), {"expert parallel size"}, {0});
  check_rejected(make_config(8, 1, 1, {2, -4}), {"expert parallel size"}, {-4});
}

BOOST_AUTO_TEST_CASE(an_expert_parallel_size_that_does_not_divide_data_parallel_is_rejected) {
  check_rejected(make_config(16, 2, 1, {3}), {"expert parallel size 3 does not divide data parallel size 8"}, {16, 2});
  check_rejected(make_config(12, 2, 1, {4}), {"expert parallel size 4 does not divide data parallel size 6"}, {12});
  check_rejected(make_config(8, 1, 1, {2, 16}), {"expert parallel size 16 does not divide data parallel size 8"}, {});
  check_rejected(make_config(16, 2, 2, {8}), {"expert parallel size 8 does not divide data parallel size 4"}, {16, 2});
}

BOOST_AUTO_TEST_CASE(an_expert_parallel_size_listed_twice_is_rejected) {
  check_rejected(make_config(16, 1, 1, {2, 4, 2}), {"twice"}, {2});
}

BOOST_AUTO_TEST_CASE(a_zero_hpz_size_below_one_or_not_dividing_the_world_is_rejected) {
  check_rejected(with_hpz(make_config(8), 0), {"hpZ"}, {0});
  check_rejected(with_hpz(make_config(8), -3), {"hpZ"}, {-3});
  check_rejected(with_hpz(make_config(8), 3), {"hpZ"}, {3, 8});
  check_rejected(with_hpz(make_config(20), 6), {"hpZ"}, {6, 20});
}

BOOST_AUTO_TEST_CASE(ranks_per_node_below_one_or_not_dividing_a_multi_node_world_is_rejected) {
  check_rejected(with_nodes(make_config(8), 0), {"per node"}, {0});
  check_rejected(with_nodes(make_config(8), -8), {"per node"}, {-8});
  check_rejected(with_nodes(make_config(12), 8), {"world size"}, {12, 8});
  check_rejected(with_nodes(make_config(10), 4), {"world size"}, {10, 4});
}

BOOST_AUTO_TEST_CASE(boundary_configurations_are_accepted) {
  for (const ParallelConfig& c :
       {make_config(1), make_config(8, 16), make_config(8, 8), make_config(8, 1, 8), make_config(16, 2, 2, {4, 2, 1}), make_config(16, 4, 4, {1}),
        with_hpz(make_config(8), 16), with_hpz(make_config(8), 8), with_hpz(make_config(8), 1), with_nodes(make_config(4), 8),
        with_nodes(make_config(8), 8), with_nodes(make_config(8), 1), with_nodes(make_config(1), 1), make_config(INT_MAX),
        make_config(INT_MAX, INT_MAX), make_config(1 << 30, 1 << 10, 1 << 10, {1 << 10})}) {
    BOOST_TEST_CONTEXT("world " << c.world_size << " tp " << c.tensor_parallel_size << " pp "
                                << c.pipeline_parallel_size) {
      BOOST_CHECK_NO_THROW(pcx::validate(c));
      BOOST_CHECK_NO_THROW(Topology{c});
    }
  }
}

BOOST_AUTO_TEST_CASE(a_huge_world_is_laid_out_lazily) {
  // 2^30 ranks: no view may list the world to answer a question about one rank.
  const Topology topology(make_config(1 << 30, 8, 4, {1 << 10}, ExpertOrder::data_first));
  const int last = (1 << 30) - 1;
  BOOST_TEST(topology.data_parallel_size() == 1 << 25);
  const GroupLayout& ep = topology.layout(expert(1 << 10));
  const std::vector<int> group = ep.group_of(last);
  BOOST_TEST_REQUIRE(group.size() == idx(1 << 10));
  BOOST_TEST(group.back() == last);
  BOOST_TEST(group[group.size() - 2] == last - 8 * (1 << 15));  // stride tp × edp
  BOOST_TEST(ep.global_rank(ep.colour(last), ep.group_rank(last)) == last);
  const GroupLayout& tensor = topology.layout(kind(GroupKind::tensor_parallel));
  BOOST_TEST(show(tensor.group_of(last)) ==
             show(std::vector<int>{last - 7, last - 6, last - 5, last - 4, last - 3, last - 2, last - 1, last}));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Views, names and lookups.

BOOST_AUTO_TEST_SUITE(views_and_names)

BOOST_AUTO_TEST_CASE(group_ids_have_the_names_pcx_plan_prints) {
  BOOST_TEST(GroupId{}.name() == "world");
  BOOST_TEST(kind(GroupKind::world).name() == "world");
  BOOST_TEST(kind(GroupKind::tensor_parallel).name() == "tensor_parallel");
  BOOST_TEST(kind(GroupKind::pipeline_parallel).name() == "pipeline_parallel");
  BOOST_TEST(kind(GroupKind::data_parallel).name() == "data_parallel");
  BOOST_TEST(expert(4).name() == "expert_parallel/4");
  BOOST_TEST(expert_data(16).name() == "expert_data_parallel/16");
  BOOST_TEST(kind(GroupKind::zero_param_intra).name() == "zero_param_intra");
  BOOST_TEST(kind(GroupKind::all_to_all_local).name() == "all_to_all_local");
  BOOST_TEST(kind(GroupKind::all_to_all_global).name() == "all_to_all_global");
}

BOOST_AUTO_TEST_CASE(views_come_in_a_fixed_order) {
  ParallelConfig c = make_config(16, 2, 1, {4, 2}, ExpertOrder::data_first);
  c.zero_hpz_size = 4;
  c.ranks_per_node = 4;
  const Topology topology(c);
  std::vector<std::string> names;
  for (const pcx::GroupView& view : topology.views()) names.push_back(view.id.name());
  BOOST_TEST(fmt::format("{}", fmt::join(names, " ")) ==
             "world tensor_parallel pipeline_parallel data_parallel expert_parallel/4 expert_data_parallel/4 "
             "expert_parallel/2 expert_data_parallel/2 zero_param_intra all_to_all_local all_to_all_global");
  for (const pcx::GroupView& view : topology.views()) {
    BOOST_TEST((topology.layout(view.id) == view.layout), view.id.name());
  }
  BOOST_TEST((topology.config() == c));
}

BOOST_AUTO_TEST_CASE(a_plain_world_has_only_the_megatron_views) {
  const Topology topology(make_config(1));
  std::vector<std::string> names;
  for (const pcx::GroupView& view : topology.views()) names.push_back(view.id.name());
  BOOST_TEST(fmt::format("{}", fmt::join(names, " ")) == "world tensor_parallel pipeline_parallel data_parallel");
  BOOST_TEST(topology.clamp_notes().empty());
  BOOST_TEST(!topology.zero_hpz_partition_size().has_value());
  for (const pcx::GroupView& view : topology.views()) BOOST_TEST(show(view.layout.groups()) == show(Groups{{0}}));
}

BOOST_AUTO_TEST_CASE(a_missing_group_kind_throws_group_not_found_naming_it) {
  ParallelConfig c = make_config(8, 1, 1, {4});
  c.ranks_per_node = 8;
  const Topology topology(c);
  auto names = [](std::string word) { return message_names({std::move(word)}); };
  BOOST_CHECK_EXCEPTION(static_cast<void>(topology.layout(expert(2))), pcx::GroupNotFound, names("expert_parallel/2"));
  BOOST_CHECK_EXCEPTION(static_cast<void>(topology.layout(expert_data(8))), pcx::GroupNotFound,
                        names("expert_data_parallel/8"));
  BOOST_CHECK_EXCEPTION(static_cast<void>(topology.layout(kind(GroupKind::zero_param_intra))), pcx::GroupNotFound,
                        names("zero_param_intra"));
  BOOST_CHECK_EXCEPTION(static_cast<void>(topology.layout(kind(GroupKind::all_to_all_global))), pcx::GroupNotFound,
                        names("all_to_all_global"));
  BOOST_CHECK_NO_THROW(static_cast<void>(topology.layout(expert(4))));
  BOOST_CHECK_NO_THROW(static_cast<void>(topology.layout(kind(GroupKind::all_to_all_local))));
  try {
    static_cast<void>(topology.layout(expert(2)));
  } catch (const pcx::Error& error) {
    BOOST_TEST(dynamic_cast<const ConfigError*>(&error) == nullptr);  // not a configuration error
  }
}

BOOST_AUTO_TEST_CASE(expert_order_parses_and_prints) {
  BOOST_TEST(pcx::to_string(ExpertOrder::expert_first) == "expert-first");
  BOOST_TEST(pcx::to_string(ExpertOrder::data_first) == "data-first");
  for (const ExpertOrder order : {ExpertOrder::expert_first, ExpertOrder::data_first}) {
    BOOST_TEST((pcx::parse_expert_order(pcx::to_string(order)) == order));
  }
  BOOST_TEST((ParallelConfig{}.expert_order == ExpertOrder::expert_first));
  for (const std::string_view bad : {"", "Expert-First", "expert_first", "data-first ", "E+D"}) {
    BOOST_CHECK_EXCEPTION(static_cast<void>(pcx::parse_expert_order(bad)), ConfigError,
                          message_names({fmt::format("'{}'", bad)}));
  }
}

BOOST_AUTO_TEST_CASE(clamped_sizes_are_noted) {
  ParallelConfig c = make_config(8, 16);
  c.zero_hpz_size = 32;
  const Topology topology(c);
  BOOST_TEST(topology.tensor_parallel_size() == 8);
  BOOST_TEST(topology.data_parallel_size() == 1);
  BOOST_TEST((topology.zero_hpz_partition_size() == std::optional<int>(8)));
  BOOST_TEST_REQUIRE(topology.clamp_notes().size() == 2u);
  BOOST_TEST(message_names({}, {16, 8})(std::runtime_error(topology.clamp_notes()[0])));
  BOOST_TEST(message_names({}, {32, 8})(std::runtime_error(topology.clamp_notes()[1])));
  BOOST_TEST((topology.config() == c));  // the configuration as given
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Property test: random valid configurations against an independent reference of the SPEC.

namespace {

int random_below(std::mt19937& rng, int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); }

int random_divisor(std::mt19937& rng, int n) {
  std::vector<int> divisors;
  for (int d = 1; d * d <= n; ++d) {
    if (n % d != 0) continue;
    divisors.push_back(d);
    if (d != n / d) divisors.push_back(n / d);
  }
  return divisors[idx(random_below(rng, static_cast<int>(divisors.size())))];
}

ParallelConfig random_config(std::mt19937& rng) {
  ParallelConfig c;
  const int bits = random_below(rng, 13);  // world up to 4096, small worlds as likely as large
  c.world_size = 1 + random_below(rng, 1 << bits);
  const int world = c.world_size;
  if (random_below(rng, 20) == 0) {
    c.tensor_parallel_size = world * (2 + random_below(rng, 3));  // clamped to the world
  } else {
    c.tensor_parallel_size = random_divisor(rng, world);
  }
  const int tp = std::min(c.tensor_parallel_size, world);
  c.pipeline_parallel_size = random_divisor(rng, world / tp);
  const int dp = world / (tp * c.pipeline_parallel_size);
  const int ep_count = random_below(rng, 4);
  for (int i = 0; i < ep_count; ++i) {
    const int ep = random_divisor(rng, dp);
    if (std::ranges::find(c.expert_parallel_sizes, ep) == c.expert_parallel_sizes.end()) {
      c.expert_parallel_sizes.push_back(ep);
    }
  }
  c.expert_order = random_below(rng, 2) == 0 ? ExpertOrder::expert_first : ExpertOrder::data_first;
  if (random_below(rng, 2) == 0) {
    c.zero_hpz_size = random_below(rng, 8) == 0 ? world + 1 + random_below(rng, world) : random_divisor(rng, world);
  }
  if (random_below(rng, 2) == 0) {
    c.ranks_per_node = random_below(rng, 8) == 0 ? world + 1 + random_below(rng, 16) : random_divisor(rng, world);
  }
  return c;
}

std::string describe(const ParallelConfig& c) {
  return fmt::format("world {} tp {} pp {} ep [{}] {} hpz {} ranks/node {}", c.world_size, c.tensor_parallel_size,
                     c.pipeline_parallel_size, fmt::join(c.expert_parallel_sizes, ","), pcx::to_string(c.expert_order),
                     c.zero_hpz_size ? std::to_string(*c.zero_hpz_size) : "-",
                     c.ranks_per_node ? std::to_string(*c.ranks_per_node) : "-");
}

// Checks one topology; returns "" or the first failure.
std::string check_topology(const ParallelConfig& c, std::mt19937& rng) {
  const Topology topology(c);
  const int world = c.world_size;
  const int tp = std::min(c.tensor_parallel_size, world);
  const int pp = c.pipeline_parallel_size;
  const int dp = world / (tp * pp);
  const Reference ref = Reference::of(c);

  if (topology.world_size() != world) return "world_size()";
  if (topology.tensor_parallel_size() != tp) return "tensor_parallel_size()";
  if (topology.pipeline_parallel_size() != pp) return "pipeline_parallel_size()";
  if (topology.data_parallel_size() != dp) return "data_parallel_size()";
  const std::optional<int> hpz = c.zero_hpz_size ? std::optional<int>(std::min(*c.zero_hpz_size, world)) : std::nullopt;
  if (topology.zero_hpz_partition_size() != hpz) return "zero_hpz_partition_size()";
  const bool clamped = c.tensor_parallel_size > world || (c.zero_hpz_size && *c.zero_hpz_size > world);
  if (clamped == topology.clamp_notes().empty()) return "clamp_notes()";

  // The expected views, in order, and their group sizes.
  std::vector<std::pair<GroupId, int>> expected{{kind(GroupKind::world), world},
                                                {kind(GroupKind::tensor_parallel), tp},
                                                {kind(GroupKind::pipeline_parallel), pp},
                                                {kind(GroupKind::data_parallel), dp}};
  for (const int ep : c.expert_parallel_sizes) {
    expected.emplace_back(expert(ep), ep);
    expected.emplace_back(expert_data(ep), dp / ep);
  }
  if (hpz) expected.emplace_back(kind(GroupKind::zero_param_intra), *hpz);
  if (c.ranks_per_node) {
    const int local = std::min(*c.ranks_per_node, world);
    expected.emplace_back(kind(GroupKind::all_to_all_local), local);
    if (world > local) expected.emplace_back(kind(GroupKind::all_to_all_global), world / local);
  }
  const auto views = topology.views();
  if (views.size() != expected.size()) return fmt::format("{} views, expected {}", views.size(), expected.size());

  for (std::size_t v = 0; v < views.size(); ++v) {
    const GroupId& id = views[v].id;
    const GroupLayout& layout = views[v].layout;
    if (!(id == expected[v].first))
      return fmt::format("view {} is {}, expected {}", v, id.name(), expected[v].first.name());
    if (layout.world_size() != world) return id.name() + ": world_size";
    if (layout.group_size() != expected[v].second) {
      return fmt::format("{}: group size {}, expected {}", id.name(), layout.group_size(), expected[v].second);
    }
    if (layout.group_count() * layout.group_size() != world) return id.name() + ": group_count";
    // Every group equals the reference group of its first member; together the groups
    // partition the world; colour, group rank and global rank agree with the listing.
    std::vector<char> seen(idx(world), 0);
    for (int colour = 0; colour < layout.group_count(); ++colour) {
      const std::vector<int> group = layout.group(colour);
      if (group.size() != idx(layout.group_size())) return fmt::format("{}: size of group {}", id.name(), colour);
      const std::vector<int> reference = ref.group(id, group.front(), c.zero_hpz_size, c.ranks_per_node);
      if (group != reference) {
        return fmt::format("{}: group {} is {}, reference {}", id.name(), colour, show(group), show(reference));
      }
      for (int i = 0; i < layout.group_size(); ++i) {
        const int r = group[idx(i)];
        if (i > 0 && group[idx(i - 1)] >= r) return fmt::format("{}: group {} not ascending", id.name(), colour);
        if (seen[idx(r)]++ != 0) return fmt::format("{}: rank {} in two groups", id.name(), r);
        if (layout.colour(r) != colour) return fmt::format("{}: colour({})", id.name(), r);
        if (layout.group_rank(r) != i) return fmt::format("{}: group_rank({})", id.name(), r);
        if (layout.global_rank(colour, i) != r) return fmt::format("{}: global_rank({}, {})", id.name(), colour, i);
      }
    }
    if (std::ranges::count(seen, 1) != world) return id.name() + ": the groups do not cover the world";
  }

  // Expert parallel × expert data parallel of one ep: orthogonal, inside data parallel.
  const GroupLayout& data = topology.layout(kind(GroupKind::data_parallel));
  for (const int ep : c.expert_parallel_sizes) {
    const GroupLayout& experts = topology.layout(expert(ep));
    const GroupLayout& replicas = topology.layout(expert_data(ep));
    if (experts.group_size() * replicas.group_size() != data.group_size())
      return fmt::format("ep {}: ep × edp != dp", ep);
    std::vector<std::int64_t> pairs;
    pairs.reserve(idx(world));
    for (int r = 0; r < world; ++r) {
      const int dp_colour = data.colour(r);
      if (data.colour(experts.global_rank(experts.colour(r), 0)) != dp_colour ||
          data.colour(experts.global_rank(experts.colour(r), experts.group_size() - 1)) != dp_colour) {
        return fmt::format("ep {}: the expert group of rank {} leaves its data parallel group", ep, r);
      }
      if (data.colour(replicas.global_rank(replicas.colour(r), 0)) != dp_colour ||
          data.colour(replicas.global_rank(replicas.colour(r), replicas.group_size() - 1)) != dp_colour) {
        return fmt::format("ep {}: the expert data group of rank {} leaves its data parallel group", ep, r);
      }
      pairs.push_back(static_cast<std::int64_t>(experts.colour(r)) * replicas.group_count() + replicas.colour(r));
    }
    std::ranges::sort(pairs);
    if (std::adjacent_find(pairs.begin(), pairs.end()) != pairs.end()) {
      return fmt::format("ep {}: an expert group and an expert data group share two ranks", ep);
    }
    for (int k = 0; k < 4; ++k) {
      const int r = random_below(rng, world);
      const std::vector<int> e = experts.group_of(r);
      const std::vector<int> j = replicas.group_of(r);
      const std::vector<int> d = data.group_of(r);
      std::vector<int> both;
      std::ranges::set_intersection(e, j, std::back_inserter(both));
      if (both != std::vector<int>{r})
        return fmt::format("ep {}: rank {}: {} and {} meet in {}", ep, r, show(e), show(j), show(both));
      if (!std::ranges::includes(d, e) || !std::ranges::includes(d, j)) {
        return fmt::format("ep {}: rank {}: {} or {} not inside {}", ep, r, show(e), show(j), show(d));
      }
    }
  }
  return {};
}

}  // namespace

BOOST_AUTO_TEST_CASE(random_configurations_match_an_independent_reference_of_the_spec) {
  constexpr std::uint32_t kSeed = 1729;
  constexpr int kConfigs = 3000;
  BOOST_TEST_MESSAGE("property test seed " << kSeed << ", " << kConfigs << " configurations");
  std::mt19937 rng(kSeed);
  int checked = 0;
  int with_experts = 0;
  int data_first = 0;
  int multi_node = 0;
  for (int n = 0; n < kConfigs; ++n) {
    const ParallelConfig c = random_config(rng);
    std::string failure;
    try {
      failure = check_topology(c, rng);
    } catch (const std::exception& error) {
      failure = fmt::format("threw: {}", error.what());
    }
    if (!failure.empty()) {
      BOOST_ERROR("configuration " << n << " (" << describe(c) << "): " << failure);
      return;
    }
    ++checked;
    with_experts += c.expert_parallel_sizes.empty() ? 0 : 1;
    data_first += !c.expert_parallel_sizes.empty() && c.expert_order == ExpertOrder::data_first ? 1 : 0;
    multi_node += c.ranks_per_node && *c.ranks_per_node < c.world_size ? 1 : 0;
  }
  BOOST_TEST_MESSAGE(checked << " configurations: " << with_experts << " with experts (" << data_first
                             << " data-first), " << multi_node << " multi-node");
  BOOST_TEST(checked == kConfigs);
  BOOST_TEST(with_experts > kConfigs / 2);
  BOOST_TEST(data_first > kConfigs / 5);
}
